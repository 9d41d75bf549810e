"""Reading the Prometheus text format that servers expose on /metrics."""

from __future__ import annotations

from nexus_core import prometheus

TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 1.0 1732000000000
vllm:num_requests_running_total 99
llamacpp:requests_processing 2

vllm:kv_cache_usage_perc{model_name="say \\"hi\\", {now}",engine="0",} 0.25
vllm:kv_cache_usage_perc{engine="1"} +Inf
vllm:kv_cache_usage_perc{engine="2"} NaN
bad{label=unquoted} 1
bad{label="unterminated} 1
bad_value{a="b"} twelve
"""


def test_samples_keep_labels_and_skip_what_does_not_parse() -> None:
    samples = prometheus.parse(TEXT)
    assert samples["vllm:num_requests_running"] == [
        ({"engine": "0", "model_name": "m"}, 3.0),
        ({"engine": "1", "model_name": "m"}, 1.0),
    ]
    assert samples["vllm:kv_cache_usage_perc"] == [
        ({"model_name": 'say "hi", {now}', "engine": "0"}, 0.25)
    ]
    assert samples["llamacpp:requests_processing"] == [({}, 2.0)]
    assert "bad" not in samples
    assert "bad_value" not in samples


def test_only_the_named_metrics_when_asked() -> None:
    samples = prometheus.parse(TEXT, {"vllm:num_requests_running", "absent"})
    assert list(samples) == ["vllm:num_requests_running"]
    assert prometheus.total(samples, "vllm:num_requests_running") == 4.0
    assert prometheus.highest(samples, "vllm:num_requests_running") == 3.0
    assert prometheus.total(samples, "absent") is None
    assert prometheus.highest(samples, "absent") is None
