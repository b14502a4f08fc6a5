"""Data loading: every file format, every error message, where/value_map/limit, the hub path (mocked), and the real
public data files in ../shared/data when present (data mixes: tests/test_mixes.py)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sweeps.config import DatasetConfig
from sweeps.data import DataError, Example, load_examples

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ROWS = [
    {"q": "What is 2+2?", "a": 4, "extra": "x"},
    {"q": "Capital of France?", "a": "Paris", "extra": "y"},
    {"q": "Colour of the sky?", "a": "blue", "extra": "x"},
]


def spec(path: Path | str, **kw) -> DatasetConfig:
    return DatasetConfig(source="file", path=str(path), **kw)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write `rows` in the format named by `path`'s extension(s)."""
    name = path.name.removesuffix(".gz")
    if name.endswith((".csv", ".tsv")):
        sep = "\t" if name.endswith(".tsv") else ","
        cols = list(rows[0])
        text = "\n".join([sep.join(cols)] + [sep.join(str(r[c]) for c in cols) for r in rows]) + "\n"
    elif name.endswith(".jsonl"):
        text = "".join(json.dumps(r) + "\n" for r in rows)
    else:
        text = json.dumps(rows)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        write(path, text)
    return path


def message(excinfo: pytest.ExceptionInfo[DataError]) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.startswith("data.t"), msg  # one line, led by the config key
    err = excinfo.value
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)  # no chained traceback
    return msg


# ---------------------------------------------------------------------------------------------------------------
# formats


@pytest.mark.parametrize("name", ["d.csv", "d.tsv", "d.json", "d.jsonl", "d.jsonl.gz", "d.csv.gz", "d.json.gz"])
def test_every_format(tmp_path: Path, name: str) -> None:
    path = write_rows(tmp_path / name, ROWS)
    got = load_examples(spec(path, columns={"prompt": "q", "answer": "a"}), key="data.t", need=("prompt", "answer"))
    assert got == [Example("What is 2+2?", answer="4"), Example("Capital of France?", answer="Paris"),
                   Example("Colour of the sky?", answer="blue")]


def test_format_override_and_unknown_extension(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "d.jsonl", ROWS).rename(tmp_path / "d.data")
    with pytest.raises(DataError) as e:
        load_examples(spec(path, columns={"prompt": "q"}), key="data.train")
    assert "data.train.format" in str(e.value) and "d.data" in str(e.value)
    got = load_examples(spec(path, format="jsonl", columns={"prompt": "q"}), key="data.train")
    assert [x.prompt for x in got] == [r["q"] for r in ROWS]
    with pytest.raises(DataError, match=r"data\.train\.format: 'xml'"):
        load_examples(spec(path, format="xml"), key="data.train")


def test_json_object_holding_one_list(tmp_path: Path) -> None:
    path = write(tmp_path / "d.json", json.dumps({"meta": "ignored", "instructions": ROWS, "inputs": []}))
    got = load_examples(spec(path, columns={"prompt": "q"}), key="data.t")
    assert len(got) == 3


def test_json_columnwise_object(tmp_path: Path) -> None:
    # safety_tuned_llamas' eval sets: parallel lists, one per column
    path = write(tmp_path / "d.json", json.dumps({"instructions": ["a", "b"], "tags": ["t1", "t2"], "inputs": []}))
    got = load_examples(spec(path, columns={"prompt": "instructions"}, where={"tags": "t2"}), key="data.t")
    assert got == [Example("b")]


def test_default_columns_input_join_and_value_map(tmp_path: Path) -> None:
    rows = [{"prompt": "Classify:", "input": "great film", "answer": 1, "response": "positive"},
            {"prompt": "Classify:", "input": "", "answer": 0, "response": ""}]
    path = write_rows(tmp_path / "d.jsonl", rows)
    got = load_examples(spec(path, value_map={"answer": {"0": "negative", "1": "positive"}}), key="data.t")
    assert got == [Example("Classify:\n\ngreat film", response="positive", answer="positive"),
                   Example("Classify:", response=None, answer="negative")]  # empty optional field -> None
    # value_map keys given as ints (YAML `0: negative`) match too; raw values missing from the map pass through
    got = load_examples(spec(path, value_map={"answer": {1: "pos"}}), key="data.t")
    assert [x.answer for x in got] == ["pos", "0"]


def test_where_compares_as_strings(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "d.csv", ROWS)
    got = load_examples(spec(path, columns={"prompt": "q", "answer": "a"}, where={"extra": "x"}), key="data.t")
    assert [x.prompt for x in got] == ["What is 2+2?", "Colour of the sky?"]
    path = write_rows(tmp_path / "d.json", ROWS)
    got = load_examples(spec(path, columns={"prompt": "q"}, where={"a": "4"}), key="data.t")  # int 4 == "4"
    assert [x.prompt for x in got] == ["What is 2+2?"]


def test_where_accepts_a_list_of_values(tmp_path: Path) -> None:
    """`where: {type: [a, b]}` keeps rows whose column is any of the values (a YAML list arrives as a ListConfig)."""
    path = write_rows(tmp_path / "d.json", ROWS)
    for accepted in (["Paris", 4], OmegaConf.create(["Paris", 4])):
        got = load_examples(spec(path, columns={"prompt": "q"}, where={"a": accepted}), key="data.t")
        assert [x.prompt for x in got] == ["What is 2+2?", "Capital of France?"]
    got = load_examples(spec(path, columns={"prompt": "q"}, where={"a": ["blue"], "extra": ["x", "y"]}), key="data.t")
    assert [x.prompt for x in got] == ["Colour of the sky?"]
    with pytest.raises(DataError, match=r"data.t: no rows in .* with where="):
        load_examples(spec(path, columns={"prompt": "q"}, where={"a": ["London"]}), key="data.t")


def test_limit_is_seeded_and_keeps_order(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "d.jsonl", [{"prompt": f"p{i}"} for i in range(50)])
    a = load_examples(spec(path, limit=10, seed=1), key="data.t")
    assert a == load_examples(spec(path, limit=10, seed=1), key="data.t")
    assert a != load_examples(spec(path, limit=10, seed=2), key="data.t")
    idx = [int(x.prompt[1:]) for x in a]
    assert len(idx) == 10 and idx == sorted(idx)
    assert len(load_examples(spec(path, limit=500), key="data.t")) == 50


def test_prompt_format_nested_columns_and_row_slices(tmp_path: Path) -> None:
    rows = [{"instruction": f"task {i}", "instances": [{"input": f"in {i}", "output": f"out {i}"}], "flag": i % 2}
            for i in range(6)]  # fmt: skip
    path = write_rows(tmp_path / "d.jsonl", rows)
    columns = {"prompt": "instruction", "input": "instances.0.input", "response": "instances.0.output"}
    got = load_examples(spec(path, columns=columns, prompt_format="Do: {prompt} [{input}]"), key="data.t",
                        need=("prompt", "response"))  # fmt: skip
    assert got[2] == Example("Do: task 2 [in 2]", response="out 2")
    # where first, then [start, stop), then limit
    got = load_examples(spec(path, columns=columns, where={"flag": 1}, start=1, stop=3), key="data.t")
    assert [x.response for x in got] == ["out 3", "out 5"]
    with pytest.raises(DataError) as err:
        load_examples(spec(path, columns=columns, start=9), key="data.t")
    assert "data.t.start: 9 is past the last of the 6 rows" in message(err)
    with pytest.raises(DataError) as err:  # a path that reaches nothing is a missing field, named as usual
        load_examples(spec(path, columns={"prompt": "instances.3.input"}), key="data.t")
    assert "field 'prompt' (column 'instances.3.input') is missing" in message(err)


def test_bad_prompt_format_and_slice_are_config_errors(tmp_path: Path) -> None:
    from sweeps.config import ConfigError, TrainConfig
    from sweeps.validate import validate

    cfg = TrainConfig()
    cfg.data.train = spec(write_rows(tmp_path / "d.jsonl", ROWS), prompt_format="{question}", start=3, stop=2)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert "data.train.prompt_format: only {prompt} and {input}" in str(err.value)
    assert "data.train.start/stop: need 0 <= start < stop" in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# errors


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        load_examples(spec(tmp_path / "nope.csv"), key="data.train")
    assert "file not found" in message(e) and "nope.csv" in message(e)


def test_bad_json_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"prompt": "a"}\n\n{"prompt": "b",}\n')
    with pytest.raises(DataError) as e:
        load_examples(spec(path), key="data.train")
    assert "d.jsonl line 3: bad JSON" in message(e)
    path = write(tmp_path / "d.json", '[\n{"prompt": "a"},\n{"prompt": \n]')
    with pytest.raises(DataError) as e:
        load_examples(spec(path), key="data.train")
    assert "d.json line 4: bad JSON" in message(e)
    path = write(tmp_path / "n.jsonl", '{"prompt": "a"}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"n\.jsonl line 2: expected a JSON object"):
        load_examples(spec(path), key="data.train")
    path = write(tmp_path / "s.json", '"just a string"')
    with pytest.raises(DataError, match=r"s\.json: expected a list of objects"):
        load_examples(spec(path), key="data.train")


def test_unreadable_files(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError) as e:
        load_examples(spec(path), key="data.train")
    assert "cannot read" in message(e) and "d.jsonl.gz" in message(e)
    path = tmp_path / "latin.csv"
    path.write_bytes("prompt\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError) as e:
        load_examples(spec(path), key="data.train")
    assert "cannot read" in message(e) and "UnicodeDecodeError" in message(e)
    with pytest.raises(DataError, match="is empty"):
        load_examples(spec(write(tmp_path / "e.csv", "")), key="data.train")


def test_csv_row_with_wrong_field_count(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "prompt,response\na,b\nc,d,e\n")
    with pytest.raises(DataError) as e:
        load_examples(spec(path), key="data.train")
    assert "d.csv row 2" in message(e) and "3 fields" in message(e)


def test_mapped_column_absent_lists_available(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "d.csv", ROWS)
    with pytest.raises(DataError) as e:
        load_examples(spec(path, columns={"prompt": "question"}), key="data.train")
    msg = message(e)
    assert "data.train.columns.prompt" in msg and "'question'" in msg and "['q', 'a', 'extra']" in msg
    with pytest.raises(DataError) as e:
        load_examples(spec(path, columns={"prompt": "q"}, where={"label": "safe"}), key="data.train")
    assert "data.train.where.label" in message(e) and "'label'" in message(e)


def test_needed_field_without_any_column(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "d.csv", ROWS)
    with pytest.raises(DataError) as e:
        load_examples(spec(path, columns={"prompt": "q"}), key="data.train", need=("prompt", "response"))
    assert "data.train.columns.response" in message(e) and "'q'" in message(e)


def test_unknown_field_names(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "d.csv", ROWS)
    with pytest.raises(DataError, match=r"data\.train\.columns: unknown field\(s\) \['question'\]"):
        load_examples(spec(path, columns={"question": "q"}), key="data.train")
    with pytest.raises(DataError, match=r"data\.train\.value_map: unknown field\(s\) \['label'\]"):
        load_examples(spec(path, columns={"prompt": "q"}, value_map={"label": {}}), key="data.train")


def test_empty_needed_field_names_file_row_field_column(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "q,a\nfirst,1\nsecond,\n")
    with pytest.raises(DataError) as e:
        load_examples(spec(path, columns={"prompt": "q", "answer": "a"}), key="data.utility", need=("answer",))
    msg = str(e.value)
    assert msg.startswith("data.utility: ") and "d.csv row 2" in msg
    assert "field 'answer' (column 'a') is empty" in msg
    # the same column is fine when the role does not need it
    got = load_examples(spec(path, columns={"prompt": "q", "answer": "a"}), key="data.utility")
    assert got[1] == Example("second")


def test_drop_empty_skips_blank_needed_rows_before_the_slice(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "d.json", [{"q": f"q{i}", "r": "" if i in (1, 3) else f"r{i}"} for i in range(6)])
    cols = {"prompt": "q", "response": "r"}
    with pytest.raises(DataError, match=r"d\.json row 2: field 'response' \(column 'r'\) is empty"):
        load_examples(spec(path, columns=cols), key="data.train", need=("response",))
    kept = load_examples(spec(path, columns=cols, drop_empty=True), key="data.train", need=("response",))
    assert [e.prompt for e in kept] == ["q0", "q2", "q4", "q5"]
    # start/stop count the rows left after dropping: two slices of one file stay disjoint and cover it
    head = load_examples(spec(path, columns=cols, drop_empty=True, stop=2), key="data.train", need=("response",))
    tail = load_examples(spec(path, columns=cols, drop_empty=True, start=2), key="data.utility", need=("response",))
    assert [e.prompt for e in head] == ["q0", "q2"] and [e.prompt for e in tail] == ["q4", "q5"]
    # a role that does not need the response keeps the blank rows (as without drop_empty)
    assert len(load_examples(spec(path, columns=cols, drop_empty=True), key="data.train")) == 6


def test_missing_and_non_scalar_fields(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "d.json", [{"q": "a", "r": "x"}, {"q": "b"}])
    with pytest.raises(DataError) as e:
        load_examples(spec(path, columns={"prompt": "q", "response": "r"}), key="data.train", need=("response",))
    assert "d.json row 2: field 'response' (column 'r') is missing" in message(e)
    path = write_rows(tmp_path / "d.jsonl", [{"q": "a"}, {"q": ["not", "text"]}])
    with pytest.raises(DataError) as e:
        load_examples(spec(path, columns={"prompt": "q"}), key="data.train")
    assert "d.jsonl line 2: field 'prompt' (column 'q') is a list" in message(e)
    # an unneeded same-named column of another shape (e.g. a list of answers) is ignored, not an error
    path = write_rows(tmp_path / "o.jsonl", [{"prompt": "a", "answer": ["x", "y"]}])
    assert load_examples(spec(path), key="data.train") == [Example("a")]


def test_where_matching_nothing_is_an_error(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "d.csv", ROWS)
    with pytest.raises(DataError) as e:
        load_examples(spec(path, columns={"prompt": "q"}, where={"extra": "X"}), key="data.train")
    assert "no rows" in message(e) and "'extra': 'X'" in message(e)


def test_bad_source_and_missing_path() -> None:
    with pytest.raises(DataError, match=r"data\.train\.source: 'web'"):
        load_examples(DatasetConfig(source="web"), key="data.train")
    with pytest.raises(DataError, match=r"data\.train\.path: required"):
        load_examples(DatasetConfig(source="file"), key="data.train")


# ---------------------------------------------------------------------------------------------------------------
# hub (mocked: no network)


def test_hub_path(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(name, subset=None, *, split):
        calls.append((name, subset, split))
        return datasets.Dataset.from_list([{"sentence": "good", "label": 1}, {"sentence": "bad", "label": 0},
                                           {"sentence": "meh", "label": 1}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    hub = DatasetConfig(source="hub", name="glue", subset="sst2", split="validation",
                        columns={"prompt": "sentence", "answer": "label"},
                        value_map={"answer": {"0": "negative", "1": "positive"}}, where={"label": 1})
    got = load_examples(hub, key="data.utility", need=("prompt", "answer"))
    assert calls == [("glue", "sst2", "validation")]
    assert got == [Example("good", answer="positive"), Example("meh", answer="positive")]

    with pytest.raises(DataError) as e:
        load_examples(DatasetConfig(source="hub", name="glue", columns={"prompt": "text"}), key="data.train")
    assert "data.train.columns.prompt" in str(e.value) and "['sentence', 'label']" in str(e.value)


def test_hub_load_failure_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")

    def boom(*args, **kwargs):
        raise FileNotFoundError("Dataset 'nope/nope' doesn't exist on the Hub\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    with pytest.raises(DataError) as e:
        load_examples(DatasetConfig(source="hub", name="nope/nope"), key="data.train")
    assert "cannot load hub dataset nope/nope" in message(e) and "doesn't exist" in message(e)


# ---------------------------------------------------------------------------------------------------------------
# the real public data files


def shared(rel: str) -> Path:
    path = SHARED / rel
    if not path.is_file():
        pytest.skip(f"public data file {path} not present (it lives outside the project; see shared/data/README.md)")
    return path


def test_real_advbench() -> None:
    path = shared("advbench/harmful_behaviors.csv")
    got = load_examples(spec(path, columns={"prompt": "goal", "response": "target"}), key="data.harmful",
                        need=("prompt", "response"))
    assert len(got) == 520 and all(x.response.startswith("Sure, here") for x in got)


def test_real_xstest() -> None:
    path = shared("xstest/xstest_prompts.csv")
    assert len(load_examples(spec(path, where={"label": "safe"}), key="data.overrefusal")) == 250
    assert len(load_examples(spec(path, where={"label": "unsafe"}), key="data.overrefusal")) == 200


def test_real_gsm8k() -> None:
    got = load_examples(spec(shared("gsm8k/test.jsonl"), columns={"prompt": "question", "answer": "answer"}),
                        key="data.utility", need=("prompt", "answer"))
    assert len(got) == 1319 and all("####" in x.answer for x in got)


def test_real_sst2() -> None:
    got = load_examples(spec(shared("sst2/glue_validation_872.tsv"), columns={"prompt": "sentence", "answer": "label"},
                             value_map={"answer": {"0": "negative", "1": "positive"}}),
                        key="data.utility", need=("prompt", "answer"))
    assert len(got) == 872 and {x.answer for x in got} == {"negative", "positive"}
    assert got[0] == Example("it 's a charming and often affecting journey . ", answer="positive")


def test_real_safety_tuned_llamas() -> None:
    got = load_examples(spec(shared("safety_tuned_llamas/safety_only_data_Instructions.json"),
                             columns={"prompt": "instruction", "input": "input", "response": "output"}),
                        key="data.refusal", need=("prompt", "response"))
    assert len(got) == 2483 and all(x.response for x in got)
    got = load_examples(spec(shared("safety_tuned_llamas/eval_I-MaliciousInstructions.json"),
                             columns={"prompt": "instructions"}), key="data.harmful")
    assert len(got) == 100


def test_real_beavertails_mix() -> None:
    path = shared("beavertails_poison_mixtures/sst2_train_merged_n1000_p0.1.json")
    cols = {"prompt": "instruction", "input": "input", "response": "output"}
    assert len(load_examples(spec(path, columns=cols), key="data.train", need=("prompt", "response"))) == 1000
    unsafe = load_examples(spec(path, columns=cols, where={"flag": "unsafe"}), key="data.train",
                           need=("prompt", "response"))
    assert len(unsafe) == 100


def test_real_humaneval_gz() -> None:
    got = load_examples(spec(shared("humaneval/HumanEval.jsonl.gz"), columns={"response": "canonical_solution"}),
                        key="data.utility", need=("prompt", "response"))
    assert len(got) == 164 and got[0].prompt.startswith("from typing import List")
