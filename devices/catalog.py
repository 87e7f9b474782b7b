"""Device catalog (``catalog.yaml``) and the cost-per-inference formula.

    cost_per_million_inferences = 1e6 × ( E_J / 3.6e6 × electricity_usd_per_kwh
                                         + price_usd / (lifetime_years × 365.25 × 86400 × duty_cycle × fps) )

E_J is the total energy per inference in joules (whatever its source; an estimated energy makes an estimated
cost), fps the measured median throughput. The first term is electricity, the second the board price amortised
over the inferences it serves in its lifetime. Defaults: 0.15 USD/kWh, 3 years, 100 % duty cycle.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

CATALOG = Path(__file__).with_name("catalog.yaml")
SECONDS_PER_YEAR = 365.25 * 86400


@functools.lru_cache(maxsize=4)
def load_catalog(path: str | None = None) -> dict[str, dict[str, Any]]:
    import yaml

    data = yaml.safe_load(Path(path or CATALOG).read_text())
    return {b["id"]: b for b in data["boards"]}


def match_board(board_model: str, catalog: dict[str, dict[str, Any]] | None = None) -> dict[str, Any] | None:
    catalog = catalog or load_catalog()
    for entry in catalog.values():
        if any(m in board_model for m in entry.get("match", [])):
            return entry
    return None


def cost_per_million(
    energy_j_per_inf: float,
    fps: float,
    price_usd: float | None,
    electricity_usd_per_kwh: float = 0.15,
    lifetime_years: float = 3.0,
    duty_cycle: float = 1.0,
) -> float:
    """USD per million inferences (see module docstring); NaN when a needed input is unknown."""
    if price_usd is None or not (fps > 0) or math.isnan(energy_j_per_inf):
        return float("nan")
    energy = energy_j_per_inf / 3.6e6 * electricity_usd_per_kwh
    amortised = price_usd / (lifetime_years * SECONDS_PER_YEAR * duty_cycle * fps)
    return 1e6 * (energy + amortised)
