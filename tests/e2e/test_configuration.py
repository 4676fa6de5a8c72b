"""Configuration errors are refused up front with a message naming the field."""

import subprocess

import pytest

from harness import ROOT, TOLLGATE, GatewayFailed, start_gateway, variant_config


def test_bad_filter_configuration_is_refused_by_the_filter(tmp_path):
    config = variant_config(tmp_path, lambda c: c["filters"]["router"].update(max_body_bytes=0))
    with pytest.raises(GatewayFailed) as failure:
        start_gateway(tmp_path / "gw", config=config, timeout=60)
    assert "invalid configuration at `max_body_bytes`: must be greater than 0" in str(failure.value)


def test_unknown_filter_field_is_refused(tmp_path):
    config = variant_config(tmp_path, lambda c: c["filters"]["meter"].update(prices="cheap"))
    with pytest.raises(GatewayFailed) as failure:
        start_gateway(tmp_path / "gw", config=config, timeout=60)
    assert "unknown field `prices`" in str(failure.value)


def test_gateway_configuration_errors_name_the_field(tmp_path):
    config = variant_config(tmp_path, lambda c: c["tiers"].update(fast={"model": "no-such-model"}))
    result = subprocess.run([str(TOLLGATE), "render", "--config", str(config)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "invalid configuration at `tiers.fast.model`: unknown model `no-such-model`" in result.stderr
