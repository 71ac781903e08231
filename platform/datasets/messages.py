"""Messages clients see for datasets, in one place."""

DATASET_NOT_FOUND = "No such dataset: '{id}'."
FILE_MISSING = "Upload the dataset as the multipart form field 'file'."
TOO_MANY_PARTS = (
    "The multipart body has more parts than an upload takes (at most {fields} fields and"
    " {files} files): send the field 'file' and nothing else."
)
MULTIPART_CUT_OFF = (
    "The multipart body ends before its closing boundary ('--' + boundary + '--'): it was"
    " cut off on its way, or built by hand without it. Send the whole body."
)
FILE_PART_UNREADABLE = (
    "The multipart part 'file' was sent but could not be read: its headers (its filename)"
    " are not UTF-8. Send the file with a UTF-8 filename (curl -F file=@data.jsonl)."
)
FILE_NOT_A_FILE = (
    "The multipart field 'file' was sent as text, not as a file: send it with a filename"
    " (curl: -F file=@data.jsonl, with @, not <)."
)
FILE_TOO_LARGE = "The file is {size} bytes; the limit is {limit} bytes."
# Refused on the request's length, before the file is read: its own size is not known yet.
UPLOAD_TOO_LARGE = (
    "The upload is {size} bytes, too large for a dataset file of at most {limit} bytes."
)
UNKNOWN_FIELD = "Received unknown form field: {name}."
# core's wording, for a JSON member or query parameter given twice.
FIELD_GIVEN_TWICE = "{name} is given more than once."
DATASET_IN_USE_OTHER_MODE = "{count} job(s) of {mode} mode, which that mode's keys see and cancel"
DATASET_IN_USE = (
    "Dataset '{id}' is in use by fine-tuning jobs that have not finished: {jobs}. Wait for "
    "them to finish, or cancel them (POST /v1/fine-tunes/{{job id}}/cancel), then delete it."
)

# Validation, per line.
NOT_UTF8 = "Line is not valid UTF-8."
NOT_JSON = "Line is not valid JSON: {error}."
NOT_OBJECT = 'Line must be a JSON object like {"text": "...", "label": "..."}.'
MISSING_FIELD = "Missing '{field}'."
NOT_STRING = "'{field}' must be a string."
NUL_CHARACTER = "'text' and 'label' must not contain NUL characters (\\u0000)."
LONE_SURROGATE = (
    "'text' and 'label' must be Unicode text: a \\ud800-\\udfff escape is only half of a character."
)
DUPLICATE_MEMBER = "'{name}' is given more than once in the object; give each member once."
CSV_DUPLICATE_COLUMN = "Column '{name}' appears more than once in the header."
EMPTY_TEXT = "'text' is empty (or has nothing visible in it)."
TEXT_TOO_LONG = "'text' is {length} characters long; the limit is {limit}."
EMPTY_LABEL = "'label' is empty (or has nothing visible in it)."
LABEL_TOO_LONG = "'label' is {length} characters long; the limit is {limit}."
DUPLICATE = "Duplicate of line {line}."
CSV_HEADER = "A CSV file needs a header row with the columns 'text' and 'label'."
CSV_COLUMNS = "Expected {expected} columns as in the header, found {found}."
CSV_UNREADABLE = (
    "Unreadable CSV: {error} (a field that opens with a quote must close it before the next"
    ' comma or the end of its row; a quote inside it is written twice: "a ""b"" c").'
)
CSV_LONE_CR = (
    "Unreadable CSV: a carriage return (CR) inside the line, outside quotes. Save the file"
    " with LF or CRLF line endings, or quote the field that holds it."
)
UNKNOWN_FORMAT = (
    'Expected JSONL (one {"text": ..., "label": ...} object per line) or CSV with a '
    "'text,label' header."
)
EMPTY_FILE = "The file contains no examples."
UTF16 = (
    "The file is UTF-16 text, not UTF-8: save it as UTF-8 (a spreadsheet's 'CSV UTF-8', or"
    " iconv -f UTF-16 -t UTF-8) and upload it again. Nothing of it was read."
)
JSON_ARRAY = (
    'The file is one JSON array; a dataset is JSONL: one {"text": ..., "label": ...} object'
    " per line, with no enclosing [ ] (jq -c '.[]' data.json > data.jsonl). Nothing of"
    " it was read."
)
TOO_MANY_LINES = (
    "The file has {count:,} lines; a dataset has at most {limit:,} (more rows than a"
    " fine-tune's token budget can train on). Nothing of it was read."
)
NOT_UTF8_STOP = (
    "Reading stopped at line {line:,}: {count:,} lines are not UTF-8 text, and no row was"
    " read. Save the file as UTF-8 and upload it again."
)
TOO_MANY_ERRORS = (
    "Validation stopped at line {line:,} after {count:,} errors: the lines after it were not"
    " read. Fix the errors listed and upload the file again."
)

# Validation, whole file.
LABEL_LOOKALIKES = (
    "Labels {labels} are one text written with different characters (a composed and a"
    " decomposed accent, or invisible characters such as a zero-width space): each would be"
    " a class of its own, named alike in every answer. Write them the same way."
)
TOO_FEW_LABELS = "At least 2 distinct labels are needed; found {count}."
TOO_MANY_LABELS = "At most {limit} distinct labels are allowed; found {count}."
TOO_FEW_EXAMPLES = "Label '{label}' has {count} {examples}; at least {minimum} are needed."
FEW_EXAMPLES = "Label '{label}' has only {count} examples; 10 or more give better models."
LABEL_WHITESPACE = (
    "Leading and trailing whitespace is removed from labels: {count} {rows} had some, the "
    "first on line {line} (trained as '{label}')."
)
LABEL_CASE_VARIANTS = (
    "Labels {labels} differ only in case: they are trained as separate classes. Write them"
    " alike if they are one."
)
EXTRA_KEYS = "Keys other than 'text' and 'label' are ignored (first seen on line {line})."
EXTRA_COLUMNS = "Columns other than 'text' and 'label' are ignored: {names}."
MORE_WARNINGS = "{count} more warnings like the ones above were left out of this list."
STORAGE_FULL = (
    "Your datasets take {used:,} bytes; this upload of {size:,} would pass the {limit:,} "
    "bytes a tenant may store. Delete datasets you no longer need to make room."
)
