"""The rig description: every problem is a RigError naming the key, whatever the file holds."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil import rigfile

ROOT = Path(__file__).resolve().parent.parent

KEYS = st.sampled_from(
    ["rig", "gateway", "broker", "platform", "receiver", "watch", "camera", "timeouts", "x"]
)
SCALARS = st.one_of(
    st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=False), st.text(max_size=12)
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3))
FIELDS = st.sampled_from(
    ["simulated", "id", "port", "buttons", "address", "role", "step_s", "fault", "config", "url"]
)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if math.isfinite(value) else "0"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def documents(draw: st.DrawFn) -> str:
    lines = []
    for table in draw(st.lists(KEYS, max_size=5, unique=True)):
        lines.append(f"[{table}]")
        for field in draw(st.lists(FIELDS, max_size=4, unique=True)):
            lines.append(f"{field} = {_toml_value(draw(VALUES))}")
    return "\n".join(lines) + "\n"


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(documents(), st.text(max_size=200)))
def test_loading_raises_only_rig_errors_that_name_a_problem(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    path = tmp_path_factory.mktemp("rig") / "rig.toml"
    path.write_text(text, encoding="utf-8")
    problems: list[str] = []
    try:
        rigfile.load(path)
    except rigfile.RigError as error:
        problems = error.problems
        assert problems, text
    assert all(isinstance(p, str) and p for p in problems)


def test_the_shipped_rigs_load() -> None:
    assert rigfile.load(ROOT / "hil/rigs/sim.toml").simulated_parts() == [
        "gateway", "broker", "receiver", "watch", "camera",
    ]  # fmt: skip
    real = rigfile.load(ROOT / "hil/rigs/gateway.toml")
    assert real.simulated_parts() == []
    assert real.receiver is not None
    assert real.receiver.button_ids() == [0x00A1B2C3]


WATCH = '[watch]\naddress = "C0:FF:EE:00:00:01"\n'
SIMULATED = "[gateway]\nsimulated = true\n[broker]\nsimulated = true\n"
REAL = '[gateway]\nid = "gw-1"\n[broker]\nport = 8883\n'


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[receiver]\nbuttons = ["xyz"]\n[broker]\nport = 8883\n', "receiver.buttons"),
        (SIMULATED + WATCH, "watch"),
        (REAL + WATCH + 'fault = "no_confirm"\n', "watch.fault"),
        ('[gateway]\nid = "gw-1"\n', "broker.port"),
        ('[gateway]\nid = "GW 1"\n[broker]\nport = 1\n', "gateway.id"),
    ],
)
def test_each_problem_names_its_key(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "rig.toml"
    path.write_text(text)
    with pytest.raises(rigfile.RigError) as caught:
        rigfile.load(path)
    assert any(named in problem for problem in caught.value.problems), caught.value.problems
