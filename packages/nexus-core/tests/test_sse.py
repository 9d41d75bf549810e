"""SSE framing: however the bytes are cut, the same complete events come out."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from nexus_core.sse import (
    _FINISHED,
    DONE,
    EventTooLarge,
    SSEParser,
    _has_finish_reason,
    completes_answer,
    error_event,
    event_data,
)

EVENTS = [
    b'data: {"id":"1","choices":[{"delta":{"content":"Hel"}}]}\n\n',
    b": keep-alive\n\n",
    b"event: message\nid: 7\ndata: line one\ndata: line two\n\n",
    b": comment inside\ndata: {}\n\n",
    b"data:no-space\n\n",
    DONE,
]
STREAM = b"".join(EVENTS)
EXPECTED = [
    b'data: {"id":"1","choices":[{"delta":{"content":"Hel"}}]}\n\n',
    b"event: message\nid: 7\ndata: line one\ndata: line two\n\n",
    b"data: {}\n\n",
    b"data:no-space\n\n",
    DONE,
]


def parse(*chunks: bytes) -> list[bytes]:
    parser = SSEParser()
    events: list[bytes] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    tail = parser.flush()
    if tail is not None:
        events.append(tail)
    return events


def test_whole_stream() -> None:
    assert parse(STREAM) == EXPECTED


def test_split_at_every_byte_boundary() -> None:
    for cut in range(len(STREAM) + 1):
        assert parse(STREAM[:cut], STREAM[cut:]) == EXPECTED, cut


def test_one_byte_at_a_time() -> None:
    assert parse(*(STREAM[i : i + 1] for i in range(len(STREAM)))) == EXPECTED


def test_each_event_in_a_chunk_of_its_own_comes_out_as_sent() -> None:
    """How backends write: one event per chunk. Such a chunk is handed back as it is."""
    assert parse(*EVENTS) == EXPECTED
    parser = SSEParser()
    chunk = EVENTS[0]
    assert parser.feed(chunk)[0] is chunk


@pytest.mark.parametrize(
    ("chunks", "events"),
    [
        # Each of these looks like one whole event but is not one as it stands.
        ([b"data: a\n", b"data: b\n\n"], [b"data: a\ndata: b\n\n"]),
        # (CR then LF across two chunks is one line end.)
        ([b"data: a\r", b"\ndata: b\n\n"], [b"data: a\ndata: b\n\n"]),
        ([b"\ndata: a\n\n"], [b"data: a\n\n"]),
        ([b": keep-alive\n\n"], []),
        ([b"data: a\n: note\n\n"], [b"data: a\n\n"]),
        ([b"data: a\r\n\r\n"], [b"data: a\n\n"]),
        ([b"data: a\n\ndata: b\n\n"], [b"data: a\n\n", b"data: b\n\n"]),
        ([b"\n\n"], []),
    ],
)
def test_chunks_that_look_like_one_event_but_are_not(
    chunks: list[bytes], events: list[bytes]
) -> None:
    assert parse(*chunks) == events


def test_a_one_event_chunk_over_the_limit_is_refused() -> None:
    parser = SSEParser(max_event_bytes=16)
    with pytest.raises(EventTooLarge):
        parser.feed(b"data: " + b"x" * 20 + b"\n\n")


def test_events_come_out_as_soon_as_their_blank_line_arrives() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n") == []
    assert parser.feed(b"\ndata: b") == [b"data: a\n\n"]
    assert parser.feed(b"\n") == []
    assert parser.feed(b"\n") == [b"data: b\n\n"]
    assert parser.flush() is None


def test_crlf_line_ends_are_normalised() -> None:
    crlf = STREAM.replace(b"\n", b"\r\n")
    assert parse(crlf) == EXPECTED
    for cut in range(len(crlf) + 1):
        assert parse(crlf[:cut], crlf[cut:]) == EXPECTED, cut


def test_cr_only_line_ends() -> None:
    cr = STREAM.replace(b"\n", b"\r")
    assert parse(cr) == EXPECTED
    for cut in range(len(cr) + 1):
        assert parse(cr[:cut], cr[cut:]) == EXPECTED, cut


def test_cr_at_the_end_of_a_chunk_then_lf_is_one_line_end() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    # If "\r" and "\n" counted as two line ends, this would complete the event.
    assert parser.feed(b"\n") == []
    assert parser.feed(b"\r") == [b"data: a\n\n"]  # the blank line is there already
    assert parser.feed(b"\n") == []  # ...and its "\n" is swallowed, not a third line end
    assert parser.feed(b"data: b\r") == []
    assert parser.feed(b"\ndata: c\r\n\r\n") == [b"data: b\ndata: c\n\n"]
    assert parser.flush() is None


def test_cr_only_events_are_not_held_back() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r\r") == [b"data: a\n\n"]
    assert parser.feed(b"data: [DONE]\r\r") == [DONE]
    assert parser.feed(b"") == []
    assert parser.feed(b"data: b\r\r") == [b"data: b\n\n"]


def test_comment_only_events_are_dropped() -> None:
    assert parse(b": ping\n\n:\n\n: a\n: b\n\n") == []


def test_comment_lines_inside_an_event_are_dropped() -> None:
    assert parse(b": start\ndata: x\n: middle\ndata: y\n\n") == [b"data: x\ndata: y\n\n"]


def test_several_blank_lines_between_events() -> None:
    assert parse(b"data: a\n\n\n\n\ndata: b\n\n\n") == [b"data: a\n\n", b"data: b\n\n"]


def test_flush_returns_an_unterminated_last_event() -> None:
    assert parse(b"data: a\n\ndata: b") == [b"data: a\n\n", b"data: b\n\n"]
    assert parse(b"data: a\n\ndata: b\n") == [b"data: a\n\n", b"data: b\n\n"]
    assert parse(b"data: a\n\ndata: b\r") == [b"data: a\n\n", b"data: b\n\n"]
    assert parse(b"data: a\n\n: only a comment") == [b"data: a\n\n"]


def test_flush_resets_the_parser() -> None:
    parser = SSEParser()
    parser.feed(b"data: a\r")
    assert parser.flush() == b"data: a\n\n"
    assert parser.flush() is None
    assert parser.feed(b"\ndata: b\n\n") == [b"data: b\n\n"]


def test_event_data_joins_data_lines() -> None:
    assert event_data(b"data: line one\ndata: line two\n\n") == b"line one\nline two"
    assert event_data(b"event: x\nid: 3\ndata:{}\n\n") == b"{}"
    assert event_data(b"data:  two spaces\n\n") == b" two spaces"  # only one space is dropped
    assert event_data(b"data\n\n") == b""
    assert event_data(DONE) == b"[DONE]"
    assert event_data(b"event: ping\n\n") == b""


def test_error_event_is_what_the_openai_sdk_raises_on() -> None:
    event = error_event("backend went away", code="upstream_cut")
    assert event.startswith(b"data: ")
    assert event.endswith(b"\n\n")
    assert event.count(b"\n") == 2
    assert json.loads(event_data(event)) == {
        "error": {
            "message": "backend went away",
            "type": "upstream_error",
            "param": None,
            "code": "upstream_cut",
        }
    }
    assert parse(event) == [event]
    custom = json.loads(event_data(error_event('say "hi"\nnow', kind="timeout")))
    assert custom["error"]["type"] == "timeout"
    assert custom["error"]["message"] == 'say "hi"\nnow'
    assert custom["error"]["code"] is None


# -- the limit on one event, and linear work ------------------------------------------------


def test_an_event_at_the_limit_passes_and_one_byte_more_is_refused() -> None:
    event = b"data: " + b"x" * 94  # 100 bytes before its blank line
    parser = SSEParser(max_event_bytes=100)
    assert parser.feed(event + b"\n\n") == [event + b"\n\n"]
    assert parser.feed(event[:50]) == []
    assert parser.feed(event[50:] + b"\n\n") == [event + b"\n\n"]
    with pytest.raises(EventTooLarge) as caught:
        parser.feed(event + b"y\n\n")
    assert caught.value.limit == 100


def test_a_growing_event_is_refused_as_soon_as_it_passes_the_limit() -> None:
    parser = SSEParser(max_event_bytes=1000)
    assert parser.feed(b"data: ") == []
    for _ in range(99):
        assert parser.feed(b"x" * 10) == []
    with pytest.raises(EventTooLarge):
        parser.feed(b"x" * 10)  # 1006 bytes pending, no end in sight
    # The buffer was let go of: nothing of the refused event remains.
    assert parser.flush() is None


def test_comment_lines_count_towards_the_limit() -> None:
    parser = SSEParser(max_event_bytes=1000)
    for _ in range(47):
        assert parser.feed(b": keep-alive padding\n") == []  # one comment-only block...
    with pytest.raises(EventTooLarge):
        parser.feed(b": keep-alive padding\n")  # ...past 1000 bytes with this line


def test_events_before_a_refused_one_in_the_same_chunk_are_handed_over() -> None:
    parser = SSEParser(max_event_bytes=100)
    small = b"data: {}\n\n"
    with pytest.raises(EventTooLarge) as caught:
        parser.feed(small + small + b"data: " + b"x" * 200)
    assert caught.value.events == [small, small]
    with pytest.raises(EventTooLarge) as caught:
        parser.feed(small + b"data: " + b"x" * 200 + b"\n\n" + small)
    assert caught.value.events == [small]


def test_a_huge_event_in_tiny_pieces_comes_out_whole() -> None:
    """Work is linear in the bytes: 1 MiB fed 16 bytes at a time (65,536 feeds). The old parser
    re-copied the pending buffer per chunk (about 32 GB of copying here)."""
    parser = SSEParser()
    payload = bytes(range(32, 48)) * 65536
    assert parser.feed(b"data: ") == []
    for start in range(0, len(payload), 16):
        assert parser.feed(payload[start : start + 16]) == []
    assert parser.feed(b"\n\ndata: next\n\n") == [b"data: " + payload + b"\n\n", b"data: next\n\n"]


def test_a_huge_event_split_across_crlf_pieces() -> None:
    parser = SSEParser()
    payload = b"y" * 300_000
    chunks = [b"data: " + payload[:100_000], payload[100_000:] + b"\r", b"\n\r", b"\n"]
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    assert events == [b"data: " + payload + b"\n\n"]


# -- property: any chunking of any stream gives the events of the whole ---------------------

_text = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=12)
_line = st.one_of(
    _text.map(lambda text: b"data: " + text.encode()),
    _text.map(lambda text: b"data:" + text.encode()),
    _text.map(lambda text: b":" + text.encode()),
    _text.map(lambda text: b"event: " + text.encode()),
    st.integers(0, 999).map(lambda number: b"id: " + str(number).encode()),
)
_events = st.lists(st.lists(_line, min_size=1, max_size=4), max_size=6)


def _expected(events: list[list[bytes]]) -> list[bytes]:
    result = []
    for lines in events:
        kept = [line for line in lines if not line.startswith(b":")]
        if kept:
            result.append(b"\n".join(kept) + b"\n\n")
    return result


@given(
    events=_events,
    line_end=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    blank_lines=st.integers(min_value=1, max_value=3),
    terminated=st.booleans(),
    cuts=st.lists(st.integers(min_value=0), max_size=20),
)
@example(
    events=[[b"data: a"], [b"data: b"]],
    line_end=b"\r\n",
    blank_lines=1,
    terminated=True,
    cuts=[8, 9, 10],
)
def test_any_chunking_gives_the_same_events(
    events: list[list[bytes]], line_end: bytes, blank_lines: int, terminated: bool, cuts: list[int]
) -> None:
    blocks = [b"".join(line + line_end for line in lines) for lines in events]
    separator = line_end * blank_lines
    stream = separator.join(blocks) + (separator if terminated and blocks else b"")
    points = sorted({cut % (len(stream) + 1) for cut in cuts})
    chunks = [stream[start:end] for start, end in itertools.pairwise([0, *points, len(stream)])]
    expected = _expected(events)
    assert parse(stream) == expected
    assert parse(*chunks) == expected


@pytest.mark.parametrize(
    ("event", "complete"),
    [
        (b'event: response.completed\ndata: {"type":"response.completed","response":{}}\n\n', True),
        (b'data: {"type": "response.incomplete", "response": {}}\n\n', True),
        (b'event: response.failed\ndata: {"type":"response.failed","response":{}}\n\n', True),
        (b'data: {"type":"response.output_text.delta","delta":"response.completed"}\n\n', False),
        # The name inside a text (escaped quotes) is not the event's type.
        (
            b'data: {"type":"response.output_text.delta",'
            b'"delta":"\\"type\\":\\"response.completed\\""}\n\n',
            False,
        ),
        (b'data: {"type":"response.created","response":{"status":"in_progress"}}\n\n', False),
    ],
)
def test_a_responses_stream_is_complete_at_its_final_event(event: bytes, complete: bool) -> None:
    assert completes_answer(event) is complete


@pytest.mark.parametrize(
    ("event", "complete"),
    [
        (b'data: {"choices":[{"delta":{},"finish_reason":null}]}\n\n', False),
        (b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n', True),
        (b'data: {"choices":[{"delta":{},"finish_reason": "length"}]}\n\n', True),
        (b'data: {"choices":[{"finish_reason" : \n "stop"}]}\n\n', True),
        (b'data: {"choices":[{"finish_reason": null}]}\n\n', False),
        # n > 1: the first choice is still going, the second is done.
        (b'data: {"choices":[{"finish_reason":null},{"finish_reason":"stop"}]}\n\n', True),
        (b'data: {"choices":[{"delta":{"content":"\\"finish_reason\\""}}]}\n\n', False),
    ],
)
def test_a_chat_chunk_completes_the_answer_with_a_finish_reason(
    event: bytes, complete: bool
) -> None:
    assert completes_answer(event) is complete


@given(
    st.lists(
        st.sampled_from(
            [b'"finish_reason"', b":", b" ", b"\n", b'"', b"null", b'"stop"', b"x", b"{", b"}"]
        ),
        max_size=12,
    )
)
def test_finish_reasons_are_found_as_the_pattern_finds_them(parts: list[bytes]) -> None:
    """The fast look for a finish_reason agrees with the regular expression it stands for."""
    event = b"data: {" + b"".join(parts) + b"}\n\n"
    assert _has_finish_reason(event) is (_FINISHED.search(event) is not None)
