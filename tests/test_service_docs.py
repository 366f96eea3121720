"""The API's own documentation: every JSON request body in /openapi.json carries an
example, and each example is accepted as it stands."""

from __future__ import annotations

from .service_helpers import auth
from .test_service_api import service
from .test_service_policies import bpr_files  # noqa: F401  (a module fixture)


def _json_bodies(spec: dict) -> list[tuple[str, str, dict]]:
    out = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            content = op.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                out.append((method, path, content["application/json"]))
    return out


def test_every_documented_request_example_is_accepted(tmp_path):
    with service(tmp_path) as c:
        spec = c.get("/openapi.json").json()
        bodies = _json_bodies(spec)
        assert ("post", "/v1/audits") in {(m, p) for m, p, _ in bodies}
        posted = 0
        for method, path, media in bodies:
            examples = [e["value"] for e in media.get("examples", {}).values()]
            if "example" in media:
                examples.append(media["example"])
            assert examples, f"{method.upper()} {path} has no example"
            for example in examples:
                r = c.request(method, path, json=example, headers=auth(c.key))
                assert r.status_code != 422, (path, example, r.text)
                if path == "/v1/audits":
                    assert r.status_code == 202, r.text
                posted += 1
        assert posted >= 2


def test_the_docs_pages_load_their_assets_from_the_service(tmp_path):
    """/docs and /redoc work offline: every script and stylesheet they name is served by
    the service itself (no CDN), and fetching it answers 200."""
    import re

    with service(tmp_path) as c:
        for page in ("/docs", "/redoc"):
            html = c.get(page).text
            assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html)
            assert assets, (page, html[:300])
            for url in assets:
                assert not url.startswith(("http://", "https://", "//")), (page, url)
                assert c.get(url).status_code == 200, (page, url)


def test_every_multipart_upload_has_an_example_that_is_accepted(tmp_path, bpr_files):  # noqa: F811
    """POST /v1/datasets and POST /v1/policies document an example in /docs; its form
    fields, sent with a real file for each file field, are accepted as they stand."""
    from recommenders.derive import synthetic_log

    log, table = synthetic_log(60, 20, 600, seed=1)
    config, weights, _ = bpr_files
    files = {
        "log.csv": log.to_csv(index=False).encode(),
        "items.csv": table.to_csv(index=False).encode(),
        "model.json": config,
        "model.safetensors": weights,
    }
    expected = {"/v1/datasets": 202, "/v1/policies": 201}
    with service(tmp_path) as c:
        spec = c.get("/openapi.json").json()
        seen = set()
        for path, methods in spec["paths"].items():
            for method, op in methods.items():
                media = op.get("requestBody", {}).get("content", {}).get("multipart/form-data")
                if media is None:
                    continue
                examples = [e["value"] for e in media.get("examples", {}).values()]
                assert examples, f"{method.upper()} {path} has no example"
                schema = spec["components"]["schemas"][media["schema"]["$ref"].split("/")[-1]]
                binary = {
                    k
                    for k, v in schema["properties"].items()
                    if "binary" in str(v) or "contentMediaType" in str(v)
                }
                for example in examples:
                    assert binary <= set(example), (path, binary, example)
                    upload = {
                        k: (v.split()[0], files[v.split()[0]])
                        for k, v in example.items()
                        if k in binary
                    }
                    form = {k: v for k, v in example.items() if k not in binary}
                    r = c.request(method, path, files=upload, data=form, headers=auth(c.key))
                    assert r.status_code == expected[path], (path, r.text)
                seen.add(path)
        assert seen == set(expected)
