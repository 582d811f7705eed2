"""Chat completions (issue 22, item 7): a chat is made one prompt by the served model's tokenizer, its
chat template rendered as transformers renders it, or, without one (the byte tokenizer), the last user
message; the answer comes back in OpenAI's chat.completion shape (the served round trip, with the
official client: tests/test_serving.py and tests/test_hf_init.py)."""

import pytest

from framework.data.tokenizer import BYTE, load
from framework.serving.completions import APIError, chat_response, parse_chat
from framework.serving.generation import Completion, ServedModel
from tests import hf_tokenizers

CHAT = [{"role": "system", "content": "You add."}, {"role": "user", "content": "1+2="},
        {"role": "assistant", "content": "3"}, {"role": "user", "content": [{"type": "text", "text": "35+"},
                                                                             {"type": "text", "text": "4="}]}]


def _model(tok, context=64):
    return {"m": ServedModel("m", ".", "weights", None, None, None, context=context, info={}, tokenizer=tok)}


def test_without_a_template_the_last_user_message_is_the_prompt():
    req = parse_chat({"model": "m", "messages": CHAT, "max_completion_tokens": 5}, _model(BYTE))
    assert req.rows[0].prompt == (BYTE.bos, *BYTE.encode("35+4=")) and req.rows[0].max_tokens == 5
    # No max_tokens: OpenAI's chat generates up to the context, not a completion's 16.
    req = parse_chat({"model": "m", "messages": CHAT}, _model(BYTE, context=40))
    assert req.rows[0].max_tokens == 40 - 6
    body = chat_response(req, [Completion("93", "stop", 3)])
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "93"},
                                "finish_reason": "stop", "logprobs": None}]
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 3, "total_tokens": 9}


def test_a_chat_template_renders_as_transformers_renders_it(tmp_path):
    from transformers import AutoTokenizer

    for layout in ("qwen", "llama"):
        directory = hf_tokenizers.write(tmp_path / layout, layout)
        ours = load(str(directory)).chat_prompt([{"role": m["role"], "content": m["content"]} for m in CHAT[:3]])
        theirs = AutoTokenizer.from_pretrained(directory).apply_chat_template(CHAT[:3], add_generation_prompt=True,
                                                                              tokenize=True)
        theirs = theirs["input_ids"] if isinstance(theirs, dict) or hasattr(theirs, "keys") else theirs
        assert list(ours) == list(theirs), layout
        im_start = load(str(directory)).encode_with_specials("<|im_start|>")[0]
        assert ours.count(im_start) == 4  # the markup's own ids, not its characters spelled out


@pytest.mark.parametrize("body, words", [
    ({"messages": [{"role": "system", "content": "x"}]}, "no user message"),
    ({"messages": []}, "non-empty list"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "role, one of"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]}, "text parts only"),
    ({"messages": [{"role": "user", "content": "1+2="}], "tools": [{"type": "function"}]}, "not supported"),
    ({"messages": [{"role": "user", "content": "1+2="}], "max_tokens": 3, "max_completion_tokens": 4}, "differ"),
    ({"messages": [{"role": "user", "content": "9" * 70}]}, "maximum context length"),
])
def test_a_chat_that_cannot_be_served_is_a_400_naming_why(body, words):
    with pytest.raises(APIError, match=words) as e:
        parse_chat({"model": "m", **body}, _model(BYTE))
    assert e.value.status == 400


def test_a_template_that_refuses_is_a_400(tmp_path):
    import json

    directory = hf_tokenizers.write(tmp_path, "qwen")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}x"
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(APIError, match="refused the messages: user first"):
        parse_chat({"model": "m", "messages": CHAT}, _model(load(str(directory))))
