"""The chart and #18's smart encoding and destination rules: route settings reach the worker,
the schema types them, the dashboard shows them and an alert watches blocked destinations."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.helm.test_chart import Rendered, _panels, helm, merged_values, parse, render, rendered, worker_settings

GUARD_ROUTE = {"gw": {"provider": "smpp_rest", "base_url": "https://x", "smart_encoding": True,
                      "allow_regions": "GB,IE", "block_regions": "CU", "allow_number_types": "mobile,unknown",
                      "block_number_types": "premium-rate,shared-cost", "secretKeys": {"api_key": "gw-key"}}}


def test_route_guard_settings_reach_the_worker() -> None:
    routes = worker_settings("full").routes
    gateway, revio = routes["gateway"].common, routes["revio"].common
    assert gateway.smart_encoding is True
    assert (gateway.block_regions, gateway.block_number_types) == ("CU,KP", "premium-rate,shared-cost")
    assert revio.allow_regions == "US,CA" and revio.smart_encoding is False
    assert routes["ogangi"].common.block_number_types == "premium-rate"      # the default holds


def test_every_guard_setting_renders_into_the_configmap() -> None:
    files = render({"routes": GUARD_ROUTE, "credentials": {"create": True, "values": {"gw-key": "k"}}})
    data = Rendered(files, parse(files)).configmap["data"]
    assert data["SMS_CONNECTOR_ROUTES__GW__SMART_ENCODING"] == "true"
    assert data["SMS_CONNECTOR_ROUTES__GW__ALLOW_REGIONS"] == "GB,IE"
    assert data["SMS_CONNECTOR_ROUTES__GW__BLOCK_REGIONS"] == "CU"
    assert data["SMS_CONNECTOR_ROUTES__GW__ALLOW_NUMBER_TYPES"] == "mobile,unknown"
    assert data["SMS_CONNECTOR_ROUTES__GW__BLOCK_NUMBER_TYPES"] == "premium-rate,shared-cost"


@pytest.mark.parametrize(("route", "message"), [
    ({"smart_encoding": "yes"}, "at '/routes/gw/smart_encoding': got string, want boolean"),
    ({"block_regions": ["CU"]}, "at '/routes/gw/block_regions': got array, want string"),
])
def test_the_schema_types_guard_settings(route: dict[str, Any], message: str) -> None:
    values = {"routes": {"gw": {**GUARD_ROUTE["gw"], **route}}, "credentials": {"create": True,
                                                                               "values": {"gw-key": "k"}}}
    with pytest.raises(helm.HelmValuesError) as exc:
        render(values)
    assert message in str(exc.value)


def test_dashboard_shows_segments_saved_and_blocked_destinations() -> None:
    r = rendered("full")
    [cm] = [c for c in r.of("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    (text,) = cm["data"].values()
    exprs = {p["title"]: " ".join(t["expr"] for t in p.get("targets", [])) for p in _panels(json.loads(text)["panels"])}
    assert "sms_outbound_segments_saved_total" in exprs["Segments saved by smart encoding"]
    assert "sum by (route, rule) (rate(sms_outbound_blocked_total" in exprs["Blocked destinations"]


def test_blocked_destinations_alert() -> None:
    r, values = rendered("full"), merged_values("full")
    [pr] = r.of("PrometheusRule")
    rules = {rule["alert"]: rule for g in pr["spec"]["groups"] for rule in g["rules"]}
    rule = rules["SmsConnectorBlockedDestinationsSurge"]
    threshold = values["metrics"]["prometheusRule"]["blockedDestinationThreshold"]
    assert rule["expr"].startswith("sum by (route, rule) (increase(sms_outbound_blocked_total{")
    assert rule["expr"].endswith(f"[15m])) > {threshold}")
    assert "{{ $labels.rule }}" in rule["annotations"]["description"]
