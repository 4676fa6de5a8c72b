"""The official OpenAI and Anthropic Python SDKs, unmodified, through the gateway."""

import anthropic
import openai


def test_openai_sdk_chat_and_stream(fresh_mocks):
    client = openai.OpenAI(base_url=f"{fresh_mocks.url}/v1", api_key="sk-test", max_retries=0)
    reply = client.chat.completions.create(
        model="llama-8b", messages=[{"role": "user", "content": "What is an AI gateway?"}])
    assert reply.choices[0].message.content
    assert reply.model == "llama-8b"
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0

    stream = client.chat.completions.create(
        model="llama-8b", messages=[{"role": "user", "content": "Stream me something"}],
        stream=True, stream_options={"include_usage": True})
    pieces, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert len(pieces) >= 3
    assert usage is not None and usage.completion_tokens > 0
    served = {r["model"] for r in fresh_mocks.mock_requests("vllm-8b")}
    assert "llama-8b" in served


def test_openai_sdk_sees_gateway_errors_as_exceptions(fresh_mocks):
    client = openai.OpenAI(base_url=f"{fresh_mocks.url}/v1", api_key="sk-test", max_retries=0)
    try:
        client.chat.completions.create(
            model="llama-8b", messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-mock-status": "500"})
    except openai.InternalServerError as e:
        # Envoy retried twice (3 tries), then passed the last 500 on.
        assert e.response.headers["x-envoy-attempt-count"] == "3"
    else:
        raise AssertionError("expected a 500")


def test_anthropic_sdk_messages_and_stream(fresh_mocks):
    client = anthropic.Anthropic(base_url=fresh_mocks.url, api_key="sk-ant-test", max_retries=0)
    message = client.messages.create(
        model="claude-sonnet-4", max_tokens=64, messages=[{"role": "user", "content": "Hello, Claude"}])
    assert message.content[0].text
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0

    with client.messages.stream(model="claude-sonnet-4", max_tokens=64,
                                messages=[{"role": "user", "content": "Stream, please"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text
    assert final.usage.output_tokens > 0
    assert all(r["path"] == "/v1/messages" for r in fresh_mocks.mock_requests("anthropic"))


def test_openai_sdk_served_by_the_anthropic_backend(fresh_mocks):
    """An OpenAI client asking for a Claude model reaches the Anthropic mock in
    Anthropic's API; the router translates the request and the answer."""
    client = openai.OpenAI(base_url=f"{fresh_mocks.url}/v1", api_key="sk-test", max_retries=0)
    reply = client.chat.completions.create(
        model="claude-sonnet-4", messages=[{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "Hello from OpenAI's SDK"}])
    assert reply.object == "chat.completion"
    assert reply.model == "claude-sonnet-4"
    assert reply.choices[0].message.content
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    served = fresh_mocks.mock_requests("anthropic")[-1]
    assert served["path"] == "/v1/messages" and served["model"] == "claude-sonnet-4-20250514"

    stream = client.chat.completions.create(
        model="claude-sonnet-4", messages=[{"role": "user", "content": "Stream it"}],
        stream=True, stream_options={"include_usage": True})
    pieces, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert len(pieces) >= 2 and usage is not None and usage.completion_tokens > 0


def test_anthropic_sdk_served_by_an_openai_compatible_backend(fresh_mocks):
    client = anthropic.Anthropic(base_url=fresh_mocks.url, api_key="sk-ant-test", max_retries=0)
    message = client.messages.create(
        model="llama-8b", max_tokens=64, system="Be brief.",
        messages=[{"role": "user", "content": "Hello from Anthropic's SDK"}])
    assert message.type == "message" and message.content[0].text
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    served = fresh_mocks.mock_requests("vllm-8b")[-1]
    assert served["path"] == "/v1/chat/completions" and served["model"] == "llama-8b"

    with client.messages.stream(model="llama-8b", max_tokens=64,
                                messages=[{"role": "user", "content": "Stream it"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.usage.output_tokens > 0
