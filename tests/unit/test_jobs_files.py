"""Upload validation and conversion for the jobs service: every bad file names its line."""

import json

import pytest

from tuneship.jobs.config import Limits
from tuneship.jobs.convert import chat_to_pair, pipeline_row, write_pipeline_file
from tuneship.jobs.validate import FileProblem, validate

pytestmark = pytest.mark.unit
LIMITS = Limits(min_lines=2, max_file_bytes=10_000, max_lines=50, max_line_chars=2_000)


def jsonl(*rows: object) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def chat(user: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def problem(data: bytes, name: str = "train.jsonl", limits: Limits = LIMITS) -> str:
    with pytest.raises(FileProblem) as err:
        validate(data, name, limits)
    return str(err.value)


def test_chat_prompt_completion_and_classification_files_are_told_apart():
    assert validate(jsonl(chat("hi", "ho"), chat("a", "b")), "x.jsonl", LIMITS).kind == "chat"
    pc = validate(jsonl({"prompt": "p", "completion": "c"}, {"prompt": "q", "completion": "d"}),
                  "x.jsonl", LIMITS)
    assert (pc.kind, pc.task, len(pc.rows)) == ("prompt_completion", "causal_lm", 2)
    cls = validate(b"text,label\ngood film,pos\nbad film,neg\n", "x.csv", LIMITS)
    assert (cls.kind, cls.task, cls.rows[1]) == ("classification", "classification",
                                                 {"text": "bad film", "label": "neg"})
    assert validate(jsonl({"text": "a", "label": 0}, {"text": "b", "label": 1}), "x.jsonl",
                    LIMITS).kind == "classification"


@pytest.mark.parametrize(("data", "name", "expected"), [
    (b"", "t.jsonl", "the file is empty"),
    (b"\n  \n", "t.jsonl", "the file is empty"),
    (jsonl(chat("a", "b")) + b"{not json}\n", "t.jsonl", "line 2: not valid JSON"),
    (b"hello world\n", "t.jsonl", "line 1: not valid JSON"),
    (jsonl(chat("a", "b"), [1, 2]), "t.jsonl", "line 2: a JSON list, not an object"),
    (jsonl({"question": "q", "answer": "a"}), "t.jsonl", "line 1: expected a 'messages' list"),
    (jsonl({"prompt": "p"}, {"prompt": "q"}), "t.jsonl", "line 1: 'completion' is missing"),
    (jsonl(chat("a", "b"), {"prompt": "p", "completion": "c"}), "t.jsonl",
     "line 2: a prompt_completion row in a file of chat rows (line 1)"),
    (jsonl(chat("a", "b"), {"messages": [{"role": "user", "content": "x"}]}), "t.jsonl",
     "line 2: the last message must be the assistant's"),
    (jsonl(chat("a", "b"), {"messages": [{"role": "bot", "content": "x"}]}), "t.jsonl",
     "line 2: messages[0].role is 'bot'"),
    (jsonl(chat("a", "b"), chat("", "b")), "t.jsonl", "line 2: messages[0].content must be"),
    (jsonl({"text": "a", "label": 1}, {"text": "b"}), "t.jsonl", "line 2: 'label' is missing"),
    (jsonl({"text": "a", "label": 1}, {"text": "b", "label": None}), "t.jsonl",
     "line 2: 'label' must be"),
    (b"text,label\ngood,pos\nbad,\n", "t.csv", "line 3: 'label' is empty"),
    (b"sentence,y\ngood,pos\n", "t.csv", "line 1: the CSV header is ['sentence', 'y']"),
    (b"text,label\ngood,pos,extra\n", "t.csv", "line 2: more fields than the header's 2"),
    (b"text,label\na,pos\nb,pos\n", "t.csv", "every row has the label 'pos'"),
    (jsonl(chat("a", "b")), "t.jsonl", "the file has 1 example(s); at least 2 are needed"),
    (b'{"text": "caf\xe9"}\n', "t.jsonl", "line 1: not valid UTF-8"),
])
def test_a_bad_file_names_the_line_and_the_problem(data, name, expected):
    assert expected in problem(data, name)


def test_size_line_and_line_length_limits():
    rows = [chat(f"q{i}", "a") for i in range(60)]
    assert "over the limit of 50" in problem(jsonl(*rows))
    assert "bytes, over the limit of 10,000 bytes" in problem(b"x" * 10_001)
    long = jsonl(chat("a", "b"), chat("x" * 3000, "b"))
    assert problem(long).startswith("line 2: ")


def test_chat_rows_become_prompt_response_pairs(tmp_path):
    assert chat_to_pair(chat("hi", "ho")["messages"]) == {"prompt": "hi", "response": "ho"}
    system = [{"role": "system", "content": "be brief"}, *chat("hi", "ho")["messages"]]
    assert chat_to_pair(system) == {"prompt": "system: be brief\n\nuser: hi", "response": "ho"}
    assert pipeline_row("classification", {"text": "t", "label": 1.0}) == {"text": "t", "label": "1"}
    checked = validate(jsonl({"prompt": "p", "completion": "c"}, {"prompt": "q", "completion": "d"}),
                       "x.jsonl", LIMITS)
    path = write_pipeline_file(checked, tmp_path / "in" / "train.jsonl")
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"prompt": "p", "response": "c"}, {"prompt": "q", "response": "d"}]
