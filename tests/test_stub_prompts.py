"""The stand-ins' prompt reading agrees with the real WebUI code.

Every expected value here was produced by running the real functions, outside this repository:
``modules/prompt_parser.py`` of A1111 v1.10.1 (82a973c0) with lark 1.1.2 (its pinned version);
``tokenize_line`` of A1111's ``modules/sd_hijack_clip.py`` (82a973c0) and of Forge 2's
``backend/text_processing/classic_engine.py`` (dfdcbab6) over the stand-in's word vocabulary
(``stand_in.text.tokenize_text``, comma token ``token_id(",")``; embeddings through the real
``EmbeddingDatabase`` of ``modules/textual_inversion/textual_inversion.py``). Forge's
``compile_weighted_conditions`` is checked in test_stub_forge.py.
"""

from __future__ import annotations

import pytest
from webui_host import installed_host


@pytest.fixture(scope="module", params=["a1111", "forge"])
def host(request):
    with installed_host(request.param) as installed:
        yield installed


# (prompts, get_learned_conditioning_prompt_schedules arguments after the prompts, the real result)
SCHEDULES = [
    (["[cat:dog:2]"], (6,), [[[2, "cat"], [6, "dog"]]]),
    (["a [cat:dog:0.5] x"], (10,), [[[5, "a cat x"], [10, "a dog x"]]]),
    (["[red hair|a hat] woman"], (4,),
     [[[1, "red hair woman"], [2, "a hat woman"], [3, "red hair woman"], [4, "a hat woman"]]]),
    (["a[b:[c:d:2]:1]e"], (10,), [[[1, "abe"], [2, "ace"], [10, "ade"]]]),
    (["[fe|||]male"], (6,), [[[1, "female"], [2, "male"], [3, "male"], [4, "male"], [5, "female"], [6, "male"]]]),
    (["[a:[b|c]:2] x"], (4,), [[[1, "a x"], [2, "a x"], [3, "b x"], [4, "c x"]]]),
    (["[ hat:3]", "[hat::3]"], (5,), [[[3, ""], [5, " hat"]], [[3, "hat"], [5, ""]]]),
    (["[a:b: 2 ]", "[a:b:1e1]", "[a:b:-1]", "[a:b:+2]", "[a:b:2.]"], (20,),
     [[[2, "a"], [20, "b"]], [[10, "a"], [20, "b"]], [[20, "b"]], [[2, "a"], [20, "b"]], [[20, "a"]]]),
    (["(woman [red:blue:2] hair:1.2)"], (4,), [[[2, "(woman red hair:1.2)"], [4, "(woman blue hair:1.2)"]]]),
    (["[[a:b:2]:c:3]"], (4,), [[[2, "a"], [3, "b"], [4, "c"]]]),
    (["a [unbalanced [b:c:2]"], (4,), [[[2, "a [unbalanced b"], [4, "a [unbalanced c"]]]),
    # unreadable for the grammar: a "|" outside an alternation, escaped brackets, a lone backslash
    (["a | b [c:d:2]", "\\[a:b:2\\]", "a [b:c:2] \\"], (4,),
     [[[4, "a | b [c:d:2]"]], [[4, "\\[a:b:2\\]"]], [[4, "a [b:c:2] \\"]]]),
    # new timelines: a decimal point makes a fraction, an integer a step
    (["[a:b:1.5]", "[a:b:1]", "[a:b:0.25]"], (10,), [[[10, "a"]], [[1, "a"], [10, "b"]], [[2, "a"], [10, "b"]]]),
    # (base steps, hires steps, use_old_scheduling)
    (["[a:b:1.5]", "[a:b:12]", "[a:b:0.5]", "[a:b:3]"], (10, None, True),
     [[[1, "a"], [10, "b"]], [[10, "a"]], [[5, "a"], [10, "b"]], [[3, "a"], [10, "b"]]]),
    (["[a:b:1.5]", "[a:b:12]", "[a:b:0.5]", "[a:b:3]"], (10, 20, False),
     [[[10, "a"], [20, "b"]], [[2, "a"], [20, "b"]], [[20, "b"]], [[20, "b"]]]),
    (["[a:b:1.5]", "[a:b:12]", "[a:b:0.5]", "[a:b:3]"], (10, 20, True),
     [[[1, "a"], [10, "b"]], [[10, "a"]], [[5, "a"], [10, "b"]], [[3, "a"], [10, "b"]]]),
]


@pytest.mark.parametrize(("prompts", "args", "expected"), SCHEDULES)
def test_prompt_schedules_are_the_real_ones(host, prompts, args, expected):
    assert host.prompt_parser.get_learned_conditioning_prompt_schedules(prompts, *args) == expected


def test_a_construct_before_a_stray_bracket_is_read_as_one_of_the_real_outcomes(host):
    # The real grammar is ambiguous here; lark gave the literal text under PYTHONHASHSEED 1 and 2 and the
    # edit under 3 to 6. The stand-in always reads the edit.
    assert host.prompt_parser.get_learned_conditioning_prompt_schedules(["[a:b:2]]"], 4) == [
        [[2, "a]"], [4, "b]"]]]


def test_and_sub_prompts_and_weights_are_the_real_ones(host):
    indexes, flat, by_text = host.prompt_parser.get_multicond_prompt_list(
        ["a woman AND red hair:0.6 AND a hat :1.5", "red hair AND a woman"])
    assert indexes == [[(0, 1.0), (1, 0.6), (2, 1.5)], [(3, 1.0), (4, 1.0)]]
    assert list(flat) == ["a woman", " red hair", " a hat", "red hair", " a woman"]
    assert by_text == {"a woman": 0, " red hair": 1, " a hat": 2, "red hair": 3, " a woman": 4}


@pytest.mark.parametrize(("text", "expected"), [
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [["a ", 1.0], ["house", 1.5730000000000004], [" ", 1.1], ["on", 1.0], [" a ", 1.1], ["hill", 0.55],
      [", sun, ", 1.1], ["sky", 1.4641000000000006], [".", 1.1]]),
    ("a, (red hair:1.2) BREAK a hat", [["a, ", 1.0], ["red hair", 1.2], ["", 1.0], ["BREAK", -1], ["a hat", 1.0]]),
    ("(a BREAK b)", [["a", 1.1], ["BREAK", -1.1], ["b", 1.1]]),  # weighted: no longer a chunk break
    ("a BREAK BREAK b", [["a", 1.0], ["BREAK", -1], ["", 1.0], ["BREAK", -1], ["b", 1.0]]),
    ("\\(x\\) [y", [["(x) ", 1.0], ["y", 0.9090909090909091]]),
])
def test_emphasis_is_the_real_one(host, text, expected):
    assert host.prompt_parser.parse_prompt_attention(text) == expected


def _text_engine(host):
    model = host.shared.sd_model
    return model.text_processing_engine if host.kind == "forge" else model.cond_stage_model


def _columns(host, line, words=("red", "hair", "hat", ",")):
    """(chunk count, token count, columns of each word in the chunks tokenize_line makes)."""
    engine = _text_engine(host)
    chunks, count = engine.tokenize_line(line)
    flat = [token for chunk in chunks for token in chunk.tokens]
    ids = {word: engine.tokenize([word])[0][0] for word in words}
    return len(chunks), count, {word: [i for i, t in enumerate(flat) if t == ids[word]] for word in words}


BACKTRACK = " ".join(f"w{i}" for i in range(70)) + ", red hair with a hat"


@pytest.mark.parametrize(("setting", "a1111", "forge"), [
    (20, (2, 80, [78], [79], [82]), (2, 80, [78], [79], [82])),
    (4, (2, 76, [72], [73], [78]), (2, 80, [78], [79], [82])),  # Forge always backtracks up to 20 tokens
    (0, (2, 76, [72], [73], [78]), (2, 80, [78], [79], [82])),
])
def test_a_full_chunk_moves_the_text_after_its_last_comma_to_the_next(host, monkeypatch, setting, a1111, forge):
    monkeypatch.setitem(host.shared.opts.data, "comma_padding_backtrack", setting)
    chunk_count, count, columns = _columns(host, BACKTRACK)
    assert (chunk_count, count, columns["red"], columns["hair"], columns["hat"]) == \
        (a1111 if host.kind == "a1111" else forge)
    assert columns[","] == [71]


def test_chunks_break_pad_with_the_end_token_and_keep_multipliers(host):
    engine = _text_engine(host)
    chunks, count = engine.tokenize_line("a woman BREAK red hair, (a hat:1.2)")
    assert count == 80 and [chunk.tokens.count(engine.id_end) for chunk in chunks] == [74, 71]
    assert _columns(host, "a woman BREAK red hair, (a hat:1.2)")[2] == \
        {"red": [78], "hair": [79], "hat": [82], ",": [80]}
    assert [m for chunk in chunks for m in chunk.multipliers if m != 1.0] == [1.2, 1.2]
    # a phrase that does not fit stays split over the chunk boundary: its last word opens the next chunk
    assert _columns(host, " ".join(f"w{i}" for i in range(74)) + " red hair")[:3] == \
        (2, 76, {"red": [75], "hair": [78], "hat": [], ",": []})


def test_emphasis_none_reads_the_line_as_it_is(host, monkeypatch):
    monkeypatch.setitem(host.shared.opts.data, "emphasis", "None")
    assert _columns(host, "a woman BREAK red hair, (a hat:1.2)") == \
        (1, 14, {"red": [4], "hair": [5], "hat": [9], ",": [6]})



def _register(host, name, vectors):
    """An embedding of ``vectors`` vectors, registered where the host keeps them (A1111: the hijack's
    database, by the model's tokenizer; Forge 2: each text engine's own). Returns the unregistering call."""
    from modules.textual_inversion.textual_inversion import Embedding

    embedding = Embedding(None, name)
    embedding.vectors = vectors
    if host.kind == "forge":
        database = _text_engine(host).embeddings
        database.register_embedding(embedding)
        return lambda: database.register_embedding_by_name(None, name)
    database = host.sd_hijack.model_hijack.embedding_db
    database.register_embedding(embedding, host.shared.sd_model)
    return lambda: database.register_embedding_by_name(None, host.shared.sd_model, name)


def test_an_embedding_takes_its_vectors_positions_and_opens_a_chunk_when_they_do_not_fit(host):
    removals = [_register(host, "emb", 2), _register(host, "emb-face", 5)]
    engine = _text_engine(host)
    try:
        assert _columns(host, "a emb woman with red hair")[:2] == (1, 7)
        chunks, _ = engine.tokenize_line("a emb woman with red hair")
        assert chunks[0].tokens[2:4] == [0, 0] and [(f.offset, f.embedding.name) for f in chunks[0].fixes] == \
            [(1, "emb")]
        assert _columns(host, "a emb woman with red hair")[2]["hair"] == [7]
        # 73 words leave 2 places in chunk 0: the 5 vectors start chunk 1
        line = " ".join(f"w{i}" for i in range(73)) + " emb-face red hair"
        chunks, count = engine.tokenize_line(line)
        assert (len(chunks), count) == (2, 82) and chunks[1].tokens[1:6] == [0] * 5
        assert [(f.offset, f.embedding.name) for f in chunks[1].fixes] == [(0, "emb-face")]
        assert _columns(host, line)[2]["red"] == [83]
        chunks, _ = engine.tokenize_line("(emb:1.5) red hair")
        assert chunks[0].multipliers[1:3] == [1.5, 1.5]
    finally:
        for remove in removals:
            remove()
    assert _columns(host, "a emb woman with red hair")[2]["hair"] == [6], "unregistered: the name's own tokens"
