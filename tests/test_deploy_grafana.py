"""The Grafana dashboard and provisioning of deploy/grafana/, against flowproof's metrics.

Every panel query is parsed by promtool and held to the series flowproof/metrics.py defines; the
consumer-group status panel's expression is evaluated by promtool on synthetic series; the
provisioning files are checked against the paths compose.yaml mounts them on.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.test_deploy_promql import (
    DESIGN_METRICS,
    STATUS_METRIC,
    STATUS_VALUES,
    parse_selection,
    promtool,
    queryable_series,
    selection_problems,
)

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "flowproof.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "flowproof.yml"
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
# Grafana's variables, replaced by values a query would really run with.
VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$sink": ".*",
    "$group": ".*",
}
_LABEL_VALUES = re.compile(r"^label_values\((.+),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$")


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def query_panels() -> list[dict[str, Any]]:
    return [p for p in all_panels(load_dashboard()["panels"]) if p["type"] != "row"]


def expressions() -> list[str]:
    return [target["expr"] for panel in query_panels() for target in panel["targets"]]


def substitute(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def compose_service(name: str) -> dict[str, Any]:
    service: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"][name]
    return service


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path of each bind mount of a compose service, mapped to the repository path."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *_mode = volume.split(":")
        if source.startswith("."):
            mounts[target] = (ROOT / source).resolve()
    return mounts


def test_dashboard_identity_and_variables() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "flowproof" and dashboard["title"] == "flowproof"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == {"datasource", "sink", "group"}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    known = queryable_series()
    for name in ("sink", "group"):
        variable = variables[name]
        assert variable["datasource"] == DATASOURCE_REF
        assert variable["includeAll"] and variable["multi"] and variable["allValue"] == ".*"
        match = _LABEL_VALUES.match(variable["query"]["query"])
        assert match, variable["query"]
        selector, label = match.groups()
        assert label == name
        assert selection_problems(substitute(selector)) == []
        (series,) = parse_selection(substitute(selector)).series
        assert label in known[series]


def test_every_panel_has_a_title_a_datasource_and_queries() -> None:
    panels = list(all_panels(load_dashboard()["panels"]))
    assert len(panels) > 10
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels:
        assert panel.get("title", "").strip(), f"panel {panel['id']} has no title"
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE_REF, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE_REF, panel["title"]
            assert target["expr"].strip() and target.get("legendFormat"), panel["title"]


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in all_panels(load_dashboard()["panels"]):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize("expr", expressions())
def test_panel_queries_select_only_exported_series(expr: str) -> None:
    assert selection_problems(substitute(expr)) == []


@pytest.mark.parametrize("expr", expressions())
def test_panel_queries_follow_the_sink_and_group_variables(expr: str) -> None:
    """A query on a per-sink or per-group series must honour the dashboard's variables."""
    known = queryable_series()
    for _name, label in parse_selection(expr).matchers:
        assert label != "sink" or "$sink" in expr, expr
        assert label != "group" or "$group" in expr, expr
    for series in parse_selection(substitute(expr)).series:
        labels = known[series]
        if "sink" in labels:
            assert f'{series}{{sink=~"$sink"' in expr.replace("\n", ""), (series, expr)
        if "group" in labels:
            assert 'group=~"$group"' in expr, (series, expr)


def test_every_design_metric_is_on_the_dashboard() -> None:
    used: set[str] = set()
    for expr in expressions():
        used |= parse_selection(substitute(expr)).series
    missing = set(DESIGN_METRICS) - used
    assert not missing, f"docs/design.md metrics not on the dashboard: {sorted(missing)}"
    assert STATUS_METRIC in used and "up" in used
    quantiles = set()
    for expr in expressions():
        if "flowproof_e2e_latency_seconds_bucket" in expr:
            match = re.search(r"histogram_quantile\((0\.\d+)", expr)
            assert match, expr
            quantiles.add(match.group(1))
    assert quantiles == {"0.5", "0.95", "0.99"}


def test_promtool_parses_every_panel_query(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": substitute(expr)}
                    for i, expr in enumerate(expressions())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_status_panel_shows_the_worst_current_status(tmp_path: Path) -> None:
    """Each status has a code in the verifier's severity order; the panel shows the worst."""
    panel = next(p for p in query_panels() if p["title"] == "Consumer group status")
    expr = substitute(panel["targets"][0]["expr"])
    mapping = panel["fieldConfig"]["defaults"]["mappings"][0]["options"]
    codes = {entry["text"]: int(value) for value, entry in mapping.items()}
    assert codes == {status: code for code, status in enumerate(STATUS_VALUES)}
    current = {
        ("kafka", "flowproof"): "STOP",
        ("kafka", "audit"): "UNKNOWN",
        ("redis", "flowproof"): "OK",
        ("redis", "audit"): "STALL",
    }
    series = [
        {
            "series": f'{STATUS_METRIC}{{sink="{sink}", group="{group}", status="{status}"}}',
            "values": "1x3" if status == now else "0x3",
        }
        for (sink, group), now in current.items()
        for status in codes
    ]
    (tmp_path / "empty.rules.yml").write_text("groups: []\n")
    test = {
        "rule_files": ["empty.rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": expr,
                        "eval_time": "2m",
                        "exp_samples": [
                            {"labels": f'{{sink="{sink}", group="{group}"}}', "value": codes[now]}
                            for (sink, group), now in current.items()
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "status.test.yml"
    path.write_text(yaml.safe_dump(test))
    result = subprocess.run(
        [promtool(), "test", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_datasource_provisioning_points_at_the_compose_prometheus() -> None:
    document = yaml.safe_load(DATASOURCES.read_text())
    (datasource,) = document["datasources"]
    assert datasource["type"] == "prometheus" and datasource["isDefault"] is True
    match = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", datasource["url"])
    assert match, datasource["url"]
    host, port = match.groups()
    prometheus = compose_service(host)
    assert f"--web.listen-address=:{port}" in prometheus["command"]


def test_dashboard_provider_path_is_where_compose_mounts_the_dashboard() -> None:
    document = yaml.safe_load(PROVIDERS.read_text())
    (provider,) = document["providers"]
    assert provider["type"] == "file"
    mounts = bind_mounts(compose_service("grafana"))
    path = provider["options"]["path"]
    assert path in mounts, f"compose.yaml mounts nothing on {path}; mounts: {sorted(mounts)}"
    assert mounts[path] == DASHBOARD.parent.resolve()
    assert mounts["/etc/grafana/provisioning/datasources"] == DATASOURCES.parent.resolve()
    assert mounts["/etc/grafana/provisioning/dashboards"] == PROVIDERS.parent.resolve()
    home = compose_service("grafana")["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    home_path = PurePosixPath(home)
    assert mounts[str(home_path.parent)] / home_path.name == DASHBOARD.resolve()
