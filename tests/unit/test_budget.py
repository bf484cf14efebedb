"""--max-error parsing (one-line errors) and budget checks against metrics."""

from __future__ import annotations

import pytest

from gaqtool.errors import InputError
from gaqtool.quant.budget import ABSOLUTE, RATIO, check_budget, describe_check, parse_budget, unmet


def test_ratio_and_absolute_limits_with_units():
    budget = parse_budget("energy=1.10,forces=1.1x")
    assert [(l.quantity, l.kind, l.value) for l in budget.limits] == [("energy", RATIO, 1.10), ("forces", RATIO, 1.1)]
    assert budget.needs_labels and not budget.needs_stress
    budget = parse_budget("forces=5meV/A, energy=1meV/atom,stress=0.01eV/A3")
    assert [(l.quantity, l.kind, l.value) for l in budget.limits] == [
        ("forces", ABSOLUTE, 5.0), ("energy", ABSOLUTE, 1.0), ("stress", ABSOLUTE, 10.0)]
    assert not budget.needs_labels and budget.needs_stress
    assert parse_budget("forces=0.005eV/A").limits[0].value == pytest.approx(5.0)


@pytest.mark.parametrize("text,message", [
    ("", "empty"),
    ("forces", "is not quantity=value"),
    ("forces=", "is not quantity=value"),
    ("dipole=1.1", "unknown quantity 'dipole'"),
    ("forces=fast", "is not a number"),
    ("forces=-1", "is not a number"),
    ("forces=0", "must be positive"),
    ("forces=5meV/atom", "unit 'meV/atom' does not fit forces"),
    ("energy=5meV/A", "does not fit energy"),
    ("forces=1.1,forces=1.2", "gives forces twice"),
    ("forces=1.1,,energy=1.1", "empty term"),
])
def test_bad_budgets_give_one_line_errors(text, message):
    with pytest.raises(InputError) as caught:
        parse_budget(text)
    assert message in caught.value.message and "\n" not in caught.value.message
    assert caught.value.hint


def _metrics(fp32_f, quant_f, deviation_f, deviation_e):
    accuracy = {"fp32": {"force_mae_mev_a": fp32_f, "energy_mae_mev": 10.0},
                "quantized": {"force_mae_mev_a": quant_f, "energy_mae_mev": 10.5}}
    return accuracy, {"force_mae_mev_a": deviation_f, "energy_mae_mev_per_atom": deviation_e}


def test_check_compares_ratios_with_fp32_and_deviations_with_limits():
    budget = parse_budget("forces=1.10,energy=1meV/atom")
    check = check_budget(budget, *_metrics(30.0, 32.0, 4.0, 0.5))
    assert check["met"] and check["values"]["forces"] == pytest.approx(32 / 30)
    check = check_budget(budget, *_metrics(30.0, 34.0, 4.0, 1.5))
    assert not check["met"] and unmet(budget, check) == ["forces", "energy"]
    assert "missed by 50.0%" in describe_check(budget.to_dict(), check)


def test_ratio_budget_needs_labels_and_stress_needs_cells():
    with pytest.raises(InputError, match="needs forces labels"):
        check_budget(parse_budget("forces=1.1"), {"fp32": {}, "quantized": {}}, {})
    with pytest.raises(InputError, match="periodic"):
        check_budget(parse_budget("stress=1meV/A3"), {"fp32": {}, "quantized": {}}, {"force_mae_mev_a": 1.0})
