"""A key in the URL's query string is refused before anything is forwarded or logged."""

import pytest

from tests.support import assert_openai_error

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    "query",
    ["api_key={key}", "x=1&api-key={key}", "KEY=whatever", "token=abc", "q={key}",
     "access_token={key}", "q=%73g-{rest}"],
)  # fmt: skip
async def test_a_key_in_the_query_string_is_refused(gateway, upstream, query):
    key = await gateway.new_key()
    url = "/v1/chat/completions?" + query.format(key=key, rest=key.removeprefix("sg-"))
    response = await gateway.http().post(url, json=BODY, headers={"Authorization": f"Bearer {key}"})
    assert_openai_error(response, 400, "invalid_request")
    assert key not in response.text
    assert upstream.stats.received == 0


async def test_ordinary_query_strings_pass(gateway, upstream):
    key = await gateway.new_key()
    headers = {"Authorization": f"Bearer {key}"}
    for query in ("limit=2&after=msg-abc", "api-version=2024-10-21", "monkey=1"):
        response = await gateway.http().get(f"/v1/files?{query}", headers=headers)
        assert response.status_code == 200, (query, response.text)
    assert upstream.stats.received == 3
