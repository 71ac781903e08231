"""Files as other tools write them: classic Mac line endings (a lone CR, Excel's "CSV
(Macintosh)"), files joined with ``cat`` (a byte order mark starting a later line), and a
lone CR inside a CSV line, named in words a file's author can act on (an outside audit)."""

from __future__ import annotations

import json

from datasets.validation import dataset_validate, max_lines

ROWS = [{"text": f"example {label} {i}", "label": label} for label in "ab" for i in range(10)]


def test_a_csv_file_with_cr_line_endings_is_read_line_by_line():
    data = "text,label\r" + "".join(f"{r['text']},{r['label']}\r" for r in ROWS)
    result = dataset_validate(data.encode(), filename="mac.csv")
    assert result.valid, result.errors
    assert result.labels == {"a": 10, "b": 10}
    assert result.examples[0] == ("example a 0", "a")


def test_a_jsonl_file_with_cr_line_endings_and_an_error_names_its_line():
    lines = [json.dumps(row) for row in ROWS]
    lines[4] = "not json"
    result = dataset_validate("\r".join(lines).encode(), filename="mac.jsonl")
    assert [(e["line"], e["message"].split(":")[0]) for e in result.errors] == [
        (5, "Line is not valid JSON")
    ]


def test_files_joined_with_cat_keep_no_byte_order_mark():
    half = len(ROWS) // 2
    first = "".join(json.dumps(row) + "\n" for row in ROWS[:half])
    second = "".join(json.dumps(row) + "\n" for row in ROWS[half:])
    result = dataset_validate(("\ufeff" + first + "\ufeff" + second).encode())
    assert result.valid, result.errors
    assert result.examples[half] == (ROWS[half]["text"], ROWS[half]["label"])
    csv = "\ufefftext,label\na text,a\n\ufeffanother,b\n" + "".join(
        f"more {i},{'ab'[i % 2]}\n" for i in range(20)
    )
    result = dataset_validate(csv.encode(), filename="joined.csv")
    assert result.valid, result.errors
    assert result.examples[1] == ("another", "b")  # no invisible character in its text


def test_a_lone_cr_inside_a_csv_line_says_what_to_do():
    data = "text,label\n" + "".join(f"row {i},{'ab'[i % 2]}\n" for i in range(20))
    data += "broken\rline,a\n"
    result = dataset_validate(data.encode(), filename="mixed.csv")
    [error] = result.errors
    assert error["line"] == 22
    assert "carriage return (CR)" in error["message"] and "LF or CRLF" in error["message"]
    assert "universal-newline" not in error["message"]


def test_a_file_with_cr_line_endings_meets_the_line_limit(settings):
    settings.FINETUNE_MAX_TRAINED_TOKENS = 3 * 1000  # max_lines() == 1000
    assert max_lines() == 1000
    rows = [b"t%d,%s" % (i, b"ab"[i % 2 : i % 2 + 1]) for i in range(1500)]
    for newline in (b"\n", b"\r"):  # (a CR-only file was read whole, past the limit)
        result = dataset_validate(newline.join([b"text,label", *rows]), filename="a.csv")
        assert "a dataset has at most" in result.errors[0]["message"], newline


def test_a_mac_csv_file_a_tool_ended_with_one_lf_is_still_read():
    data = "text,label\r" + "".join(f"{r['text']},{r['label']}\r" for r in ROWS[:-1])
    data += f"{ROWS[-1]['text']},{ROWS[-1]['label']}\n"
    result = dataset_validate(data.encode(), filename="mac.csv")
    assert result.valid, result.errors
    assert sum(result.labels.values()) == len(ROWS)
