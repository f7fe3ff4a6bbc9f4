"""POST /v1/embeddings through a real server whose engine is the default Gemma model loaded
as an embedding engine, with the official openai SDK (which asks for base64 by default)."""
from __future__ import annotations

import base64
import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from ..server_process import ENGINE, ServerProcess, start_server, stop_server

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file

QUERY = "The cat sat on the mat."
PARAPHRASE = "A cat was sitting on the rug."
UNRELATED = "Quarterly tax filings are due at the end of April."
OTHERS = [f"Request {i} talks about {topic}." for i, topic in enumerate(
    ["rockets", "bread", "rivers", "chess", "stocks", "violins", "glaciers", "bicycles", "leaves",
     "Rome", "qubits", "knots", "volcanoes", "jazz", "tea", "penguins"])]
TOLERANCE = 1e-5
GENERATION_ENGINE = "gen"


@pytest.fixture(scope="module")
def embedding_server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The default model as an embedding engine (32 inputs per step, 512 tokens per step),
    plus the same model as a generation engine for the refusal tests."""
    running = start_server(model_path, tmp_path_factory.mktemp("embeddings") / "server.log",
                           "--embedding", "--n-ctx", "1024", "--parallel", "32")
    try:
        response = httpx.post(f"{running.base_url}/engines", timeout=300, json={
            "engine_id": GENERATION_ENGINE, "model_path": str(model_path), "n_ctx": 512})
        assert response.status_code == 201, response.text
        yield running
    finally:
        stop_server(running)


@pytest.fixture(scope="module")
def client(embedding_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=embedding_server.base_url + "/v1", api_key="unused", max_retries=0,
                         timeout=300)


def vectors(response: openai.types.CreateEmbeddingResponse) -> np.ndarray:
    """The response's vectors; an explicit encoding_format="base64" leaves the SDK's items
    as base64 text (it decodes only the base64 it asked for by itself)."""
    assert [item.index for item in response.data] == list(range(len(response.data)))
    return np.array([np.frombuffer(base64.b64decode(item.embedding), dtype="<f4")
                     if isinstance(item.embedding, str) else item.embedding
                     for item in response.data], dtype=np.float32)


def test_sdk_float_and_base64_single_and_batch(client: openai.OpenAI) -> None:
    floats = client.embeddings.create(model=ENGINE, input=[QUERY, PARAPHRASE, UNRELATED],
                                      encoding_format="float")
    assert floats.object == "list" and floats.model == ENGINE
    assert all(item.object == "embedding" for item in floats.data)
    batch = vectors(floats)
    assert batch.shape == (3, 640)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    assert batch[0] @ batch[1] > batch[0] @ batch[2]  # a paraphrase is closer than a stranger
    # the SDK's default: base64, decoded by the SDK itself; the same float32 values
    default = vectors(client.embeddings.create(model=ENGINE, input=[QUERY, PARAPHRASE, UNRELATED]))
    assert np.abs(default - batch).max() <= TOLERANCE
    single = vectors(client.embeddings.create(model=ENGINE, input=QUERY, encoding_format="base64"))
    assert single.shape == (1, 640) and np.abs(single[0] - batch[0]).max() <= TOLERANCE
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 3


def test_base64_is_little_endian_float32(embedding_server: ServerProcess) -> None:
    url = f"{embedding_server.base_url}/v1/embeddings"
    encoded = httpx.post(url, json={"model": ENGINE, "input": QUERY, "encoding_format": "base64"},
                         timeout=300).json()
    plain = httpx.post(url, json={"model": ENGINE, "input": QUERY}, timeout=300).json()
    raw = base64.b64decode(encoded["data"][0]["embedding"])
    assert len(raw) == 640 * 4
    decoded = np.frombuffer(raw, dtype="<f4")
    assert np.abs(decoded - np.array(plain["data"][0]["embedding"], dtype=np.float32)).max() <= TOLERANCE
    assert plain["usage"] == encoded["usage"]


def test_same_input_same_vector_alone_or_among_concurrent_requests(client: openai.OpenAI,
                                                                    embedding_server: ServerProcess) -> None:
    alone = vectors(client.embeddings.create(model=ENGINE, input=QUERY))[0]
    status = f"{embedding_server.base_url}/engines/{ENGINE}/status"
    steps_before = httpx.get(status).json()["stats"]["steps"]
    with concurrent.futures.ThreadPoolExecutor(len(OTHERS) + 1) as pool:
        futures = [pool.submit(client.embeddings.create, model=ENGINE, input=text)
                   for text in OTHERS + [QUERY]]
        results = [vectors(future.result())[0] for future in futures]
    assert np.abs(results[-1] - alone).max() <= TOLERANCE
    assert httpx.get(status).json()["stats"]["steps"] - steps_before < len(futures)  # batched
    inside = vectors(client.embeddings.create(model=ENGINE, input=OTHERS[:8] + [QUERY] + OTHERS[8:]))
    assert np.abs(inside[8] - alone).max() <= TOLERANCE


def test_token_id_inputs_equal_their_text(client: openai.OpenAI, embedding_server: ServerProcess) -> None:
    tokenized = httpx.post(f"{embedding_server.base_url}/tokenize",
                           json={"model": ENGINE, "content": PARAPHRASE, "add_special": True}).json()
    ids = tokenized["tokens"]
    assert ids[0] == 2  # <bos>: text inputs get it too
    text = vectors(client.embeddings.create(model=ENGINE, input=PARAPHRASE))
    one = vectors(client.embeddings.create(model=ENGINE, input=ids))
    several = vectors(client.embeddings.create(model=ENGINE, input=[ids, ids[:3]]))
    assert np.abs(one - text).max() <= TOLERANCE and np.abs(several[0] - text[0]).max() <= TOLERANCE
    assert several.shape == (2, 640)


def test_dimensions_and_user(client: openai.OpenAI) -> None:
    same = client.embeddings.create(model=ENGINE, input=QUERY, dimensions=640, user="someone")
    assert len(same.data[0].embedding) == 640
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model=ENGINE, input=QUERY, dimensions=256)
    assert raised.value.param == "dimensions" and "640" in raised.value.message


@pytest.mark.parametrize("body, param, words", [
    ({"input": ""}, "input", "empty string"),
    ({"input": []}, "input", "empty"),
    ({"input": [[]]}, "input", "input[0] is empty"),
    ({"input": ["fine", "word " * 600]}, "input", "input[1] has"),
    ({"input": [[2, 3], [10**7]]}, "input", "input[1]: token ids"),
    ({"input": [[2] * 500] * 601}, "input", "300500 tokens in all, more than the 300000"),
    ({"input": [-1]}, "input", "token ids are integers >= 0"),
    ({"input": [QUERY, 5]}, "input", "a list of strings"),
    ({"input": QUERY, "encoding_format": "float16"}, "encoding_format", "float"),
    ({"input": QUERY, "dimensions": 0}, "dimensions", "greater than or equal to 1"),
    ({"input": QUERY, "temperature": 1}, "temperature", "Extra inputs"),
])
def test_bad_requests_are_400s(embedding_server: ServerProcess, body: dict, param: str,
                               words: str) -> None:
    response = httpx.post(f"{embedding_server.base_url}/v1/embeddings", json={"model": ENGINE, **body},
                          timeout=300)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_wrong_engine_kinds_are_clear_400s(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model=GENERATION_ENGINE, input=QUERY)
    assert raised.value.code == "embeddings_not_supported"
    assert '"embedding": true' in raised.value.message and "POST /engines" in raised.value.message
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=ENGINE, messages=[{"role": "user", "content": "hi"}])
    assert raised.value.code == "embedding_engine"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=ENGINE, prompt="hi")
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="missing", input=QUERY)


def test_alias_without_v1_and_engine_status(embedding_server: ServerProcess) -> None:
    response = httpx.post(f"{embedding_server.base_url}/embeddings", json={"model": ENGINE, "input": "hi"},
                          timeout=300)
    assert response.status_code == 200 and len(response.json()["data"][0]["embedding"]) == 640
    stats = httpx.get(f"{embedding_server.base_url}/engines/{ENGINE}/status").json()["stats"]
    assert stats["inputs_total"] >= 1 and stats["slots_total"] == 31


def test_metrics_are_scraped_with_an_embedding_engine_loaded(client: openai.OpenAI,
                                                             embedding_server: ServerProcess) -> None:
    """Issue 27: /metrics answered 500 whenever an embedding engine was loaded (the vLLM
    collector read KV-cache keys such an engine has not), so Prometheus lost every metric."""
    client.embeddings.create(model=ENGINE, input=QUERY)
    scrape = httpx.get(f"{embedding_server.base_url}/metrics", timeout=30)
    assert scrape.status_code == 200, scrape.text[:500]
    lines = scrape.text.splitlines()
    assert any(line.startswith(f'vllm:num_requests_waiting{{model_name="{ENGINE}"}}') for line in lines)
    kv_usage = f'vllm:kv_cache_usage_perc{{model_name="{ENGINE}"'
    assert not [line for line in lines if line.startswith(kv_usage)]  # no KV cache: not reported
    assert any(line.startswith(f'kolosal_waiting_requests{{model="{ENGINE}"}}') for line in lines)


def test_the_engine_says_it_serves_embeddings(embedding_server: ServerProcess) -> None:
    entry = httpx.get(f"{embedding_server.base_url}/v1/models/{ENGINE}", timeout=30).json()
    assert entry["kind"] == "embedding" and entry["pooling"] in ("mean", "cls", "last")
    status = httpx.get(f"{embedding_server.base_url}/engines/{ENGINE}", timeout=30).json()
    assert status["model"]["kind"] == "embedding" and status["model"]["pooling"] == entry["pooling"]
