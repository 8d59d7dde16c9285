from __future__ import annotations

import json

import pytest

from slimasr.errors import DataError
from slimasr.evaluate.report import collect_rows, markdown_table, write_report


def write_metrics(model_dir, **metrics):
    model_dir.mkdir(parents=True)
    (model_dir / "metrics.json").write_text(json.dumps(metrics))
    return model_dir


def test_rows_compare_every_model_with_the_first(tmp_path):
    big = write_metrics(tmp_path / "teacher", wer=10.0, params=8_000_000, macs_per_second_audio=200e6,
                        latency_ms_p50=40.0)
    small = write_metrics(tmp_path / "student", wer=12.5, params=2_000_000, macs_per_second_audio=50e6,
                          latency_ms_p50=10.0)
    rows = collect_rows([big, small])
    assert [r["model"] for r in rows] == ["teacher", "student"]
    assert rows[1]["size_ratio"] == 0.25 and rows[1]["macs_ratio"] == 0.25 and rows[1]["speedup"] == 4.0
    assert rows[0]["size_ratio"] == rows[0]["speedup"] == 1.0
    table = markdown_table(rows).splitlines()
    assert table[0].startswith("| model | WER % |")
    assert table[3].startswith("| student | 12.50 | — |")  # missing CER shows as a dash
    assert "| 2,000,000 | 0.25 | 50.0 | 0.25 | 10.0 | 4.00 |" in table[3]


def test_the_table_names_the_processors_latency_was_timed_on(tmp_path):
    a = write_metrics(tmp_path / "a", wer=5.0, latency_ms_p50=2.0, latency_cpu="CPU X (2 cores)")
    b = write_metrics(tmp_path / "b", wer=6.0, latency_ms_p50=1.0, latency_cpu="CPU X (2 cores)")
    c = write_metrics(tmp_path / "c", wer=7.0, latency_ms_p50=1.5, latency_cpu="CPU Y (8 cores)")
    lines = markdown_table(collect_rows([a, b, c])).splitlines()
    assert lines[-1] == "- latency timed on CPU X (2 cores), CPU Y (8 cores)"
    assert "latency timed on" not in markdown_table([{"model": "m", "wer": 1.0}])  # none timed


def test_a_copy_of_a_shipped_model_is_named_under_the_table(tmp_path):
    teacher = write_metrics(tmp_path / "teacher", wer=5.0)
    (teacher / "provenance.json").write_text(json.dumps({"name": "smarthome-crnn"}))
    student = write_metrics(tmp_path / "student", wer=6.0)
    (student / "provenance.json").write_text(json.dumps({"name": "x-causal", "summary": "250 epochs"}))
    own = write_metrics(tmp_path / "own", wer=7.0)
    rows = collect_rows([teacher, student, own])
    assert [r.get("note") for r in rows] == ["shipped model smarthome-crnn",
                                             "shipped model x-causal: 250 epochs", None]
    assert markdown_table(rows).splitlines()[-2:] == ["- teacher: shipped model smarthome-crnn",
                                                      "- student: shipped model x-causal: 250 epochs"]


def test_report_files_are_written(tmp_path):
    model = write_metrics(tmp_path / "m", wer=5.0, params=10, macs_per_second_audio=1e6, latency_ms_p50=1.0)
    paths = write_report(collect_rows([model]), tmp_path / "out" / "report")
    assert json.loads(paths["json"].read_text())[0]["wer"] == 5.0
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["md"].read_text().count("\n") == 3


def test_each_plotted_model_has_its_own_colour_and_exported_graphs_are_squares(tmp_path):
    from matplotlib import colormaps

    from slimasr.evaluate.report import _styles, plot_report

    rows = [{"model": "teacher", "wer": 30.0, "latency_ms_p50": 30.0, "runtime": "pytorch"},
            {"model": "student", "wer": 39.0, "macs_per_second_audio": 4e7, "runtime": "pytorch"},
            {"model": "student_onnx (int8)", "wer": 39.2, "model_bytes": 1e6, "runtime": "onnxruntime"},
            {"model": "student_sherpa", "wer": 64.0, "runtime": "sherpa-onnx"}]  # no cost: not plotted
    styles = _styles(rows, colormaps["tab10"])
    assert list(styles) == ["teacher", "student", "student_onnx (int8)"]
    assert len({color for color, _ in styles.values()}) == 3
    assert [marker for _, marker in styles.values()] == ["o", "o", "s"]
    for name, plotted in (("r.png", rows), ("none.png", rows[-1:])):  # none: empty panels, no legend
        plot_report(plotted, tmp_path / name)
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unevaluated_model_is_a_one_line_error(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(DataError, match=r"metrics.json: no evaluation results"):
        collect_rows([tmp_path / "m"])


@pytest.mark.parametrize("content, problem", [
    ("[1, 2]", "expected a JSON object of metrics, got list"),
    ('{"wer": "low"}', "'wer' must be a number, got 'low'"),
    ('{"wer": true}', "'wer' must be a number, got True"),
    ('{"params": 12.5}', "'params' must be a whole number, got 12.5"),
])
def test_malformed_metrics_are_one_line_errors_naming_the_file(tmp_path, content, problem):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "metrics.json").write_text(content)
    with pytest.raises(DataError) as info:
        collect_rows([tmp_path / "m"])
    assert str(info.value) == f"{tmp_path / 'm' / 'metrics.json'}: {problem}"


def test_a_bundle_gives_a_row_per_evaluated_graph(tmp_path):
    model = write_metrics(tmp_path / "teacher", wer=10.0, params=100, model_bytes=400_000)
    bundle = write_metrics(tmp_path / "b", wer=10.0, params=100, model_bytes=400_100)
    (bundle / "bundle.json").write_text("{}")
    rows = collect_rows([model, bundle])
    assert [r["model"] for r in rows] == ["teacher", "b (fp32)"]
    int8 = {"wer": 10.5, "params": 100, "model_bytes": 101_000}
    (bundle / "metrics.int8.json").write_text(json.dumps(int8))
    rows = collect_rows([model, bundle, bundle / "model.int8.onnx"])
    assert [(r["model"], r["model_bytes"], r["model_dir"]) for r in rows] == [
        ("teacher", 400_000, str(model)), ("b (fp32)", 400_100, str(bundle)),
        ("b (int8)", 101_000, str(bundle)), ("b (int8)", 101_000, str(bundle))]
    (bundle / "metrics.json").unlink()
    with pytest.raises(DataError) as info:
        collect_rows([bundle / "model.onnx"])
    assert str(info.value) == (f"{bundle / 'metrics.json'}: no evaluation results; run `slimasr evaluate` "
                               "on this model first")


def test_the_pareto_front_keeps_the_points_nothing_beats_on_both():
    from slimasr.evaluate.report import pareto_front

    points = [(20.0, 38.0), (9.5, 39.7), (2.3, 39.7), (0.5, 86.0), (0.2, 86.0), (5.0, 50.0)]
    assert pareto_front(points) == [(0.2, 86.0), (2.3, 39.7), (20.0, 38.0)]


def test_greedy_results_beside_beam_search_fill_the_greedy_column(tmp_path):
    beam = write_metrics(tmp_path / "teacher", wer=30.0, cer=10.0, decode="beam")
    (beam / "greedy.json").write_text(json.dumps({"wer": 40.0, "cer": 15.0, "decode": "greedy"}))
    greedy = write_metrics(tmp_path / "student", wer=50.0, decode="greedy")
    stream = write_metrics(tmp_path / "stream", wer=60.0, final_ms_p50=4.25, note="streaming, 160 ms chunks")
    rows = collect_rows([beam, greedy, stream])
    assert [(r["wer"], r.get("wer_greedy"), r.get("cer_greedy")) for r in rows] == [
        (30.0, 40.0, 15.0), (50.0, 50.0, None), (60.0, None, None)]
    table = markdown_table(rows).splitlines()
    assert table[2].startswith("| teacher | 30.00 | 40.00 | 10.00 |")
    assert table[3].startswith("| student | 50.00 | 50.00 | — |")
    assert table[4].startswith("| stream | 60.00 | — | — |")
    assert table[4].endswith("| 4.2 | — |") and table[5:] == ["", "- stream: streaming, 160 ms chunks"]
