"""The validation rules, one by one: every problem is named with its line."""

from __future__ import annotations

import json

from datasets import messages
from datasets.validation import (
    MAX_COUNTED_ERRORS,
    MAX_REPORTED_ERRORS,
    dataset_validate,
    normalised_jsonl,
)


def jsonl(rows):
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def good_rows(labels=("a", "b"), per_label=10):
    return [
        {"text": f"example {label} {i}", "label": label}
        for label in labels
        for i in range(per_label)
    ]


def messages_by_line(result):
    return [(e["line"], e["message"]) for e in result.errors]


def test_a_good_jsonl_file():
    result = dataset_validate(jsonl(good_rows()))
    assert result.valid and result.format == "jsonl"
    assert result.labels == {"a": 10, "b": 10}
    assert result.errors == [] and result.warnings == []


def test_a_good_csv_file_with_quoted_newlines_and_bom():
    data = '\ufefftext,label\n"line one\nline two",a\n' + "".join(
        f"text {i},{'a' if i % 2 else 'b'}\n" for i in range(20)
    )
    result = dataset_validate(data.encode(), filename="train.csv")
    assert result.valid, result.errors
    assert result.format == "csv" and result.examples[0] == ("line one\nline two", "a")
    assert sum(result.labels.values()) == 21


def test_each_line_problem_is_reported_with_its_line():
    lines = [
        json.dumps({"text": "fine", "label": "a"}),
        "not json at all",
        json.dumps(["a", "list"]),
        json.dumps({"label": "a"}),
        json.dumps({"text": 5, "label": "a"}),
        json.dumps({"text": "   ", "label": "a"}),
        json.dumps({"text": "x" * 10_001, "label": "a"}),
        json.dumps({"text": "fine", "label": "b"}),
        json.dumps({"text": "ok", "label": ""}),
        json.dumps({"text": "\u200b\u200b\u00ad", "label": "a"}),
        json.dumps({"text": "fine again", "label": "\u200b"}),
    ]
    data = ("\n".join(lines) + "\n").encode() + b'{"text": "\xff", "label": "a"}\n'
    data += b'{"text": "a null label", "label": null}\n'  # there, and not a string
    data += b'{"text": "not a number", "label": "a", "x": NaN}\n'  # not JSON (RFC 8259)
    data += b'{"text": "\xd7\xa9\xd7\x81", "label": "a"}\n'  # a letter and its point: fine
    data += b'{"text": "\xd6\xb0\xd6\xb1", "label": "a"}\n'  # Hebrew points alone: empty
    found = messages_by_line(dataset_validate(data))
    by_line = {}
    for line, message in found:
        by_line.setdefault(line, []).append(message)
    assert "not valid JSON" in by_line[2][0]
    assert "must be a JSON object" in by_line[3][0]
    assert by_line[4] == ["Missing 'text'."]
    assert by_line[5] == ["'text' must be a string."]
    assert by_line[6] == ["'text' is empty (or has nothing visible in it)."]
    assert "10001 characters" in by_line[7][0]
    assert by_line[8] == ["Duplicate of line 1."]
    assert by_line[9] == ["'label' is empty (or has nothing visible in it)."]
    # Nothing visible: zero-width and soft-hyphen characters only, as classify refuses them.
    assert by_line[10] == ["'text' is empty (or has nothing visible in it)."]
    assert by_line[11] == ["'label' is empty (or has nothing visible in it)."]
    assert by_line[12] == ["Line is not valid UTF-8."]
    assert by_line[13] == ["'label' must be a string."]  # was "Missing 'label'."
    assert "not valid JSON" in by_line[14][0]  # was valid, the NaN ignored with the "x"
    assert 15 not in by_line
    assert by_line[16] == ["'text' is empty (or has nothing visible in it)."]


def test_whole_file_rules():
    one_label = dataset_validate(jsonl(good_rows(labels=("a",))))
    assert not one_label.valid
    assert any("At least 2 distinct labels" in m for _, m in messages_by_line(one_label))

    few = dataset_validate(jsonl(good_rows(per_label=10)[:10] + good_rows(("b",), 4)))
    assert (None, "Label 'b' has 4 examples; at least 5 are needed.") in messages_by_line(few)

    warned = dataset_validate(jsonl(good_rows(per_label=7)))
    assert warned.valid and len(warned.warnings) == 2

    many = dataset_validate(jsonl(good_rows(labels=[f"l{i}" for i in range(101)], per_label=5)))
    assert any("At most 100 distinct labels" in m for _, m in messages_by_line(many))

    empty = dataset_validate(b"\n\n")
    assert not empty.valid and messages_by_line(empty) == [(None, "The file contains no examples.")]


def test_only_the_first_100_errors_are_listed_but_all_are_counted():
    data = b"".join(b"nope\n" for _ in range(250))
    result = dataset_validate(data + jsonl(good_rows()))
    assert result.error_count == 250 and len(result.errors) == MAX_REPORTED_ERRORS
    assert [e["line"] for e in result.errors] == list(range(1, 101))


def test_a_file_of_bad_lines_only_lists_its_first_100_lines_and_no_label_count():
    """Every line bad: no count of labels (0) took the place of the 100th bad line."""
    result = dataset_validate(b'{"text": 1, "label": "a"}\n' * 250)
    assert result.error_count == 250
    assert [e["line"] for e in result.errors] == list(range(1, 101))


def test_reading_stops_after_ten_thousand_errors_and_says_where():
    """19 MB of bad two-byte lines held an API thread for 99 s and 1.2 GB: the reading now
    stops at the 10,000th error, listing the first 100 and where it stopped."""
    bad = MAX_COUNTED_ERRORS + 5_000
    result = dataset_validate(b"x\n" * bad + jsonl(good_rows()), filename="big.jsonl")
    assert not result.valid and result.error_count == MAX_COUNTED_ERRORS + 1
    assert [e["line"] for e in result.errors] == [*range(1, 100), None]
    assert result.errors[-1]["message"] == (
        "Validation stopped at line 10,000 after 10,000 errors: the lines after it were not"
        " read. Fix the errors listed and upload the file again."
    )


def test_a_file_of_more_rows_than_the_token_budget_can_train_is_invalid_unread(settings):
    """Every row is 3 tokens or more: past budget / 3 lines, no fine-tune could train on it
    (10 million tokens: 3,333,333 lines). Checked by a count, before a line is split out."""
    from datasets.validation import max_lines

    assert max_lines() == 3_333_333
    settings.FINETUNE_MAX_TRAINED_TOKENS = 3_000  # (1,000 lines: a small file to test)
    for data in (b"x\n" * 1_001, b"\n" * 1_000 + b"x"):
        result = dataset_validate(data, filename="huge.jsonl")
        assert result.error_count == 1 and not result.examples
        assert result.errors == [{"line": None, "message": (
            "The file has 1,001 lines; a dataset has at most 1,000 (more rows than a"
            " fine-tune's token budget can train on). Nothing of it was read."
        )}]  # fmt: skip
    # Exactly the limit is read (a last line without its newline counts once).
    last = dataset_validate(b"\n" * 999 + b"x", filename="a.jsonl")
    assert [e["line"] for e in last.errors] == [1_000]


def test_undecodable_lines_stop_the_reading_saying_no_row_was_read():
    """Lines that are not UTF-8 are found for the whole file first: 10,000 of them late in
    the file stopped at one of them saying "the lines after it were not read", while rows
    before it had not been read either (a review); and 3.3 million took 7.7 s uncapped."""
    data = jsonl(good_rows()) + b"\xff\n" * (MAX_COUNTED_ERRORS + 10)
    result = dataset_validate(data, filename="a.jsonl")
    assert result.error_count == MAX_COUNTED_ERRORS + 1 and not result.examples
    assert result.errors[-1]["message"].startswith("Reading stopped at line ")
    assert "10,000 lines are not UTF-8 text, and no row was read" in result.errors[-1]["message"]


def test_a_whole_file_problem_is_listed_behind_any_number_of_bad_lines():
    """Sorted last, it was cut off behind 100 bad lines: found only once every line was fixed."""
    data = b"".join(b"nope\n" for _ in range(150))
    result = dataset_validate(data + jsonl(good_rows(labels=("only",))))
    assert result.error_count == 151 and len(result.errors) == MAX_REPORTED_ERRORS
    assert [e["line"] for e in result.errors] == [*range(1, 100), None]
    assert "distinct labels" in result.errors[-1]["message"]


def test_csv_problems():
    no_header = dataset_validate(b"hello,a\nworld,b\n", filename="x.csv")
    assert messages_by_line(no_header)[0][1].startswith("A CSV file needs a header")
    ragged = dataset_validate(b"text,label\nonly one column\n", filename="x.csv")
    assert (2, "Expected 2 columns as in the header, found 1.") in messages_by_line(ragged)


def test_a_csv_row_past_any_size_or_a_bare_carriage_return_is_reported_and_the_rest_read():
    """The audit's case: validation stopped at the first row the csv module could not read
    (a field over its 128 KiB default, a bare CR in an unquoted field), so later problems
    were neither reported nor counted."""
    rows = [f"good text {i},{'ab'[i % 2]}" for i in range(20)]
    data = "\n".join(["text,label", *rows, '"' + "y" * 200_000 + '",a', "bare\rcr,b",
                       "after,a", "after2"]).encode() + b"\n"  # fmt: skip
    found = messages_by_line(dataset_validate(data, filename="x.csv"))
    assert (22, "'text' is 200000 characters long; the limit is 10000.") in found
    assert any(line == 23 and "Unreadable CSV" in message for line, message in found)
    assert (25, "Expected 2 columns as in the header, found 1.") in found
    assert len(found) == 3


def test_labels_that_differ_only_in_case_are_two_classes_and_a_warning_says_so():
    rows = good_rows(labels=("Pos", "neg")) + good_rows(labels=("pos",))
    result = dataset_validate(jsonl(rows))
    assert result.valid and set(result.labels) == {"Pos", "neg", "pos"}
    [warning] = [w for w in result.warnings if "differ only in case" in w["message"]]
    assert "'Pos' (" in warning["message"] and "'pos' (" in warning["message"]


def test_unknown_format():
    result = dataset_validate(b"just some prose\nwithout structure\n")
    assert not result.valid and "Expected JSONL" in result.errors[0]["message"]


def test_a_utf16_file_is_told_to_be_saved_as_utf8():
    """Excel's "Unicode text" and PowerShell write UTF-16: read as UTF-8, every line was an
    error (not UTF-8, NUL characters, no header) and none said what the file is."""
    csv_text = "text,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(20))
    jsonl_text = jsonl(good_rows()).decode()
    for data in (
        csv_text.encode("utf-16"),
        csv_text.encode("utf-16-le"),
        jsonl_text.encode("utf-16-be"),
    ):
        result = dataset_validate(data, filename="data.csv")
        assert messages_by_line(result) == [(None, messages.UTF16)], messages_by_line(result)
    # A UTF-8 file with one stray NUL is not taken for UTF-16.
    stray = jsonl(good_rows()) + b'{"text": "a\x00b", "label": "a"}\n'
    assert [line for line, _ in messages_by_line(dataset_validate(stray))] == [21]


def test_a_json_array_is_told_to_be_jsonl():
    """A pretty-printed array was an error on each of its lines, none naming the format."""
    rows = good_rows()
    for data in (json.dumps(rows, indent=2), "\n\n" + json.dumps(rows)):
        result = dataset_validate(data.encode(), filename="data.json")
        first = 3 if data.startswith("\n") else 1
        assert messages_by_line(result) == [(first, messages.JSON_ARRAY)]
    # A JSONL file whose first line is an array (a bad line, with good ones after it) is
    # read as JSONL: that line's error, the good rows counted (it was "one JSON array",
    # nothing read).
    for bad in ("[1, 2]", '["text", "label"]'):
        result = dataset_validate(f"{bad}\n".encode() + jsonl(rows), filename="data.jsonl")
        assert [line for line, _ in messages_by_line(result)] == [1]
        assert messages.JSON_ARRAY not in messages_by_line(result)[0][1]
        assert result.rows == len(rows) and not result.valid
    # A CSV whose header's first column is bracketed is still a CSV.
    data = "[id],text,label\n" + "".join(f"{i},text {i},{'ab'[i % 2]}\n" for i in range(20))
    assert dataset_validate(data.encode()).valid


def test_extra_keys_warn_once():
    rows = [{**row, "id": i} for i, row in enumerate(good_rows())]
    result = dataset_validate(jsonl(rows))
    assert result.valid and len(result.warnings) == 1 and result.warnings[0]["line"] == 1


def test_extra_csv_columns_warn_and_are_read_past():
    """As a JSONL line's other keys (a file of a spreadsheet's several columns was valid
    without a word that only two were read)."""
    rows = [f"{i},text number {i},{'pos' if i % 2 else 'neg'},,web" for i in range(12)]
    data = ("id,text,label,,source\n" + "\n".join(rows) + "\n").encode()
    result = dataset_validate(data, filename="reviews.csv")
    columns = [w for w in result.warnings if w["message"].startswith("Columns other")]
    assert result.valid and [w["line"] for w in columns] == [1]
    assert columns[0]["message"].endswith("ignored: id, source.")
    plain = "text,label\n" + "".join(f"text {i},{'pos' if i % 2 else 'neg'}\n" for i in range(12))
    warnings = dataset_validate(plain.encode(), filename="reviews.csv").warnings
    assert not [w for w in warnings if w["message"].startswith("Columns other")]


def test_the_content_says_what_a_file_is_before_its_name():
    """An ``id,text,label`` CSV sent without a .csv name (``curl -F file=@-``) was refused
    as neither format, and a JSONL file named .csv was read as a CSV without a header."""
    rows = [f"{i},text number {i},{'pos' if i % 2 else 'neg'}" for i in range(12)]
    data = ("ID,Text,Label\n" + "\n".join(rows) + "\n").encode()
    for name in ("", "upload", "reviews.txt", "reviews.jsonl"):
        result = dataset_validate(data, filename=name)
        assert (result.valid, result.format) == (True, "csv"), (name, result.errors)
    result = dataset_validate(jsonl(good_rows()), filename="train.csv")
    assert (result.valid, result.format) == (True, "jsonl"), result.errors
    # A header that lacks a column is told so, named or not; a .csv whose first cell opens
    # a brace is still a CSV.
    lacking = dataset_validate(b"text,category\nhello,a\n", filename="")
    assert lacking.format == "csv" and "'label'" in lacking.errors[0]["message"]
    braced = "text,label\n" + "".join(f"{{x}} {i},{'ab'[i % 2]}\n" for i in range(12))
    result = dataset_validate(braced.replace("text,label\n", "{text},label\n").encode(),
                              filename="odd.csv")  # fmt: skip
    assert result.format == "csv", result.errors


def test_normalised_jsonl_round_trips_unicode():
    data = normalised_jsonl([("café ☕", "a"), ('quote " and \\', "b")])
    rows = [json.loads(line) for line in data.decode().splitlines()]
    assert rows == [{"text": "café ☕", "label": "a"}, {"text": 'quote " and \\', "label": "b"}]


def test_nul_characters_are_an_error_not_a_database_failure():
    data = jsonl([{"text": "a\u0000b", "label": "x"}, {"text": "ok", "label": "y\u0000"}])
    found = messages_by_line(dataset_validate(data))
    assert [line for line, m in found if "NUL" in m] == [1, 2]


def test_a_line_nested_too_deeply_is_an_error_not_a_crash():
    data = jsonl(good_rows()) + b"[" * 5000 + b"]" * 5000 + b"\n"
    result = dataset_validate(data)
    assert not result.valid
    assert [line for line, _ in messages_by_line(result)] == [21]


def test_a_member_named_twice_is_an_error_on_its_line():
    """json keeps the last of two "text" members silently; another reader takes the first."""
    rows = good_rows()
    lines = [json.dumps(row) for row in rows]
    lines[3] = '{"text": "first", "text": "second", "label": "a"}'
    lines[5] = '{"text": "nested", "label": "a", "meta": {"id": 1, "id": 2}}'
    result = dataset_validate(("\n".join(lines) + "\n").encode())
    assert not result.valid
    assert messages_by_line(result) == [
        (4, "'text' is given more than once in the object; give each member once."),
        (6, "'id' is given more than once in the object; give each member once."),
    ]
    assert "second" not in {text for text, _ in result.examples}
    # Distinct members, nested ones included, are still fine.
    rows[3]["meta"] = {"id": 1, "source": "mail"}
    assert dataset_validate(jsonl(rows)).valid


def test_a_csv_column_named_twice_is_an_error_on_the_header():
    body = "".join(f"text {i},{'ab'[i % 2]},other {i}\n" for i in range(20))
    for header in ("text,label,text", "text,label,Text ", "text,note,label,note"):
        columns = header.count(",") + 1
        rows = body if columns == 3 else body.replace(",other", ",x,other")
        result = dataset_validate(f"{header}\n{rows}".encode(), filename="x.csv")
        assert not result.valid and result.examples == []
        name = "note" if "note" in header else "text"
        found = [(line, m) for line, m in messages_by_line(result) if line is not None]
        assert found == [(1, f"Column '{name}' appears more than once in the header.")]
    # Unnamed trailing columns, as spreadsheets export them, are not a repeated name.
    trailing = "".join(f"text {i},{'ab'[i % 2]},,\n" for i in range(20))
    assert dataset_validate(f"text,label,,\n{trailing}".encode(), filename="x.csv").valid


def test_labels_are_trained_without_surrounding_whitespace_and_a_warning_says_so():
    rows = good_rows(labels=("negative", "positive"))
    rows[2]["label"] = "negative "
    rows[4]["label"] = "\tnegative"
    rows[15]["label"] = "positive\u00a0"  # a no-break space, as spreadsheets paste it
    result = dataset_validate(jsonl(rows))
    assert result.valid, result.errors
    assert result.labels == {"negative": 10, "positive": 10}
    assert {label for _, label in result.examples} == {"negative", "positive"}
    assert result.warnings == [
        {
            "line": 3,
            "message": "Leading and trailing whitespace is removed from labels: 3 rows had "
            "some, the first on line 3 (trained as 'negative').",
        }
    ]
    # A CSV written with a space after each comma: the labels are the names without it.
    data = "text, label\n" + "".join(f"text {i}, {'ab'[i % 2]}\n" for i in range(20))
    csv_result = dataset_validate(data.encode(), filename="x.csv")
    assert csv_result.valid and csv_result.labels == {"a": 10, "b": 10}
    assert len(csv_result.warnings) == 1 and "20 rows" in csv_result.warnings[0]["message"]
    # A label of whitespace only is still an empty label; clean labels warn about nothing.
    rows[2]["label"] = " \t"
    assert (3, "'label' is empty (or has nothing visible in it).") in messages_by_line(
        dataset_validate(jsonl(rows))
    )
    assert dataset_validate(jsonl(good_rows())).warnings == []


def test_a_flood_of_errors_and_warnings_is_counted_not_kept():
    """A megabyte of bad lines held ~240 MB of error records until the end; thousands of
    labels differing only in case stored a warning each."""
    from datasets.validation import MAX_REPORTED_WARNINGS

    result = dataset_validate(b'{"text": 1, "label": "a"}\n' * 200_000)  # stops at 10,000
    assert result.error_count == MAX_COUNTED_ERRORS + 1
    assert len(result.errors) == MAX_REPORTED_ERRORS
    assert [e["line"] for e in result.errors] == [*range(1, 100), None]  # where it stopped
    rows = [{"text": f"text {n}", "label": f"l{n % 150}"} for n in range(1500)]
    rows += [{"text": f"other {n}", "label": f"L{n % 150}"} for n in range(1500)]
    flooded = dataset_validate(jsonl(rows))
    assert len(flooded.warnings) == MAX_REPORTED_WARNINGS + 1
    assert flooded.warnings[-1]["message"].startswith("50 more warnings")


def test_a_csv_quote_left_open_is_an_error_on_its_line_not_a_merged_row():
    """It was read as one row with the next line (a valid file: the broken row's label and
    a good row lost, a wrong text trained on)."""
    rows = [f"example text number {i},{'ab'[i % 2]}" for i in range(24)]
    data = "\n".join(["text,label", *rows[:12], '"unterminated,a', f'"x{rows[12]}', *rows[13:]])
    result = dataset_validate(data.encode() + b"\n", filename="x.csv")
    found = messages_by_line(result)
    assert not result.valid
    assert [line for line, message in found if "Unreadable CSV" in message] == [14]
    assert "written twice" in found[0][1]
    assert not any("unterminated" in text for text, _ in result.examples)
    # A quote that closes before more text in its field is refused too (it read '"x" y' as
    # 'x y'); quotes inside an unquoted field, and doubled ones inside a quoted one, are text.
    odd = dataset_validate(b'text,label\n"x" y,a\n', filename="x.csv")
    assert any("Unreadable CSV" in message for _, message in messages_by_line(odd))
    fine = "\n".join(["text,label", 'He said "hi",a', '"a ""b"" c",b', *rows[:20]])
    assert dataset_validate(fine.encode(), filename="x.csv").examples[:2] == [
        ('He said "hi"', "a"),
        ('a "b" c', "b"),
    ]


def test_labels_that_are_one_text_in_different_characters_are_an_error():
    """café composed and decomposed, pos and pos with a zero-width space: trained as four
    classes whose names look like two in every answer's scores (an outside audit)."""
    rows = good_rows(labels=("café", "pos")) + good_rows(labels=("cafe\u0301", "pos\u200b"))
    result = dataset_validate(jsonl(rows))
    assert not result.valid
    lookalikes = [e["message"] for e in result.errors if "different characters" in e["message"]]
    assert len(lookalikes) == 2
    assert "'caf\\xe9' (" in lookalikes[0] and "'cafe\\u0301' (" in lookalikes[0]
    assert "'pos' (" in lookalikes[1] and "'pos\\u200b' (" in lookalikes[1]
    # Case alone is still a warning (two classes, maybe meant), and a direction mark inside
    # a label that has no lookalike is left alone.
    cased = dataset_validate(jsonl(good_rows(labels=("Café", "café", "\u202eRTL"))))
    assert cased.valid
    assert [w for w in cased.warnings if "differ only in case" in w["message"]]


def test_csv_rows_after_lines_that_are_not_utf8_keep_their_line_numbers():
    """Lines are read afresh on each pass (not kept: memory); a line that is not UTF-8 is
    passed over, and the rows after it still say which line they are on."""
    rows = "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(12))
    data = (
        b"\xef\xbb\xbftext,label\n" + rows.encode() + b"bad \xff,a\n"
        + b'"two\nlines",b\n' + b"x,y,z\n" + b'"open,a\n'
    )  # fmt: skip
    result = dataset_validate(data, filename="x.csv")
    found = messages_by_line(result)
    assert [line for line, _ in found if line is not None] == [14, 17, 18]
    assert "not valid UTF-8" in found[0][1] and "columns" in found[1][1]
    assert ("two\nlines", "b") in result.examples and result.rows == 13
    assert result.labels == {"a": 6, "b": 7}


def test_the_normalised_rows_are_what_the_file_held():
    data = jsonl([{"text": "caf\u00e9 \u2615", "label": "a"}, {"text": 'q " \\', "label": "b"}])
    result = dataset_validate(data + jsonl(good_rows()))
    assert result.content().startswith(normalised_jsonl([("caf\u00e9 \u2615", "a")]))
    assert result.content() == normalised_jsonl(result.examples)
    assert result.rows == len(result.examples) == 22
