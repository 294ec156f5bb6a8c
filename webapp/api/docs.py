"""The API reference page: a self-contained, readable HTML rendering of the OpenAPI schema."""

from __future__ import annotations

import json

from django.http import HttpResponse
from django.urls import reverse
from django.utils.html import escape, format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.http import require_GET
from drf_spectacular.generators import SchemaGenerator

METHODS = ("get", "post", "put", "patch", "delete")


@require_GET
def api_docs(request):
    """A self-contained, readable reference built from the OpenAPI schema (no CDN, no JavaScript)."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    info = schema.get("info", {})
    operations = [
        _operation_html(path, method, item[method])
        for path, item in schema.get("paths", {}).items()
        for method in METHODS
        if method in item
    ]
    components = sorted(schema.get("components", {}).get("schemas", {}).items())
    html = format_html(
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>{title} reference</title><style>{css}</style></head><body>"
        "<h1>{title} <small>{version}</small></h1><p>{description}</p>"
        '<p>Machine-readable schema: <a href="{schema_url}">{schema_url}</a> (OpenAPI 3, YAML; add '
        "<code>?format=json</code> for JSON). Reads are public; writes need an authenticated user "
        '(session or HTTP Basic). Errors are JSON: <code>{{"detail": message}}</code>, or '
        "<code>{{field: [messages]}}</code> for invalid input.</p>"
        "<h2>Shopper feedback and A/B serving</h2><p>Similar products and search results say which model version "
        "served them (<code>model_version</code>): a candidate version under A/B test answers a configured share of "
        "clients, the same clients every time (a client is its session, signed-in user, <code>X-Client-Id</code> "
        "header or address, kept only as a keyed hash). They also carry a <code>feedback_token</code>: post it with "
        "a result's product id to <code>/api/feedback/not-similar/</code> when a result does not look like the "
        "query (for a photo search, send the same photo again as <code>image</code>; it is stored only then, for "
        "the reviewers), or to <code>/api/feedback/click/</code> when the shopper opens it. A mark becomes a "
        "pending training triplet that curators review; it never changes the model by itself. Both endpoints are "
        "public and rate-limited per client (429 beyond the limit); a signed-in session sends its CSRF token.</p>"
        "<h2>Endpoints</h2>{operations}<h2>Schemas</h2>{components}</body></html>",
        title=info.get("title", "API"),
        version=info.get("version", ""),
        description=info.get("description", ""),
        css=mark_safe(DOCS_CSS),
        schema_url=request.build_absolute_uri(reverse("api:schema")),
        operations=_join(operations),
        components=_join(_component_html(n, c) for n, c in components),
    )
    return HttpResponse(html)


def _join(parts) -> SafeString:
    return format_html_join("", "{}", ((part,) for part in parts))


def _type_name(schema: dict) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return _type_name(schema["allOf"][0])
    if schema.get("type") == "array":
        return f"array of {_type_name(schema.get('items', {}))}"
    kind = schema.get("type", "any")
    if schema.get("format"):
        kind += f" ({schema['format']})"
    if schema.get("enum"):
        kind += " — one of " + ", ".join(str(v) for v in schema["enum"] if v is not None)
    if schema.get("nullable"):
        kind += ", nullable"
    for key in ("minimum", "maximum", "default"):
        if key in schema:
            kind += f"; {key} {json.dumps(schema[key])}"
    return kind


def _ref_of(schema: dict) -> str | None:
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return _ref_of(schema["allOf"][0])
    return schema.get("$ref")


def _type_html(schema: dict) -> SafeString:
    """The type, linked to its schema section when it is (an array of) a named component."""
    name = _type_name(schema)
    ref = _ref_of(schema) or _ref_of(schema.get("items", {}))
    if ref:
        target = ref.rsplit("/", 1)[-1]
        return format_html('{}<a href="#schema-{}">{}</a>', name.removesuffix(target), target, target)
    return escape(name)


def _operation_html(path: str, method: str, operation: dict) -> SafeString:
    parameters = operation.get("parameters", [])
    params_html = (
        format_html(
            "<table><tr><th>Parameter</th><th>In</th><th>Required</th><th>Type</th><th>Description</th></tr>{}</table>",
            format_html_join(
                "",
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                (
                    (
                        p["name"],
                        p["in"],
                        "yes" if p.get("required") else "no",
                        _type_html(p.get("schema", {})),
                        p.get("description", ""),
                    )
                    for p in parameters
                ),
            ),
        )
        if parameters
        else ""
    )
    content = operation.get("requestBody", {}).get("content", {})
    body_html = (
        format_html(
            "<p><b>Request body</b>: {}</p>",
            format_html_join(
                "; ",
                "<code>{}</code> {}",
                ((media, _type_html(spec.get("schema", {}))) for media, spec in content.items()),
            ),
        )
        if content
        else ""
    )
    responses = format_html_join(
        "",
        "<li><b>{}</b> {} {}</li>",
        (
            (
                code,
                _type_html(next(iter(response["content"].values())).get("schema", {}))
                if response.get("content")
                else "",
                response.get("description", ""),
            )
            for code, response in operation.get("responses", {}).items()
        ),
    )
    anchor = f"{method}-{path}".replace("/", "-").replace("{", "").replace("}", "")
    return format_html(
        '<section class="op" id="{}"><h3><span class="method {}">{}</span> <code>{}</code> {}</h3><p>{}</p>'
        "{}{}<p><b>Responses</b></p><ul>{}</ul></section>",
        anchor,
        method,
        method.upper(),
        path,
        operation.get("summary", ""),
        operation.get("description", ""),
        params_html,
        body_html,
        responses,
    )


def _component_html(name: str, component: dict) -> SafeString:
    properties = component.get("properties", {})
    required = set(component.get("required", []))
    if not properties:
        return format_html('<section id="schema-{}"><h3>{}</h3><p>{}</p></section>', name, name, _type_html(component))
    rows = format_html_join(
        "",
        "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
        (
            (prop, "yes" if prop in required else "no", _type_html(spec), spec.get("description", ""))
            for prop, spec in properties.items()
        ),
    )
    return format_html(
        '<section id="schema-{}"><h3>{}</h3><table><tr><th>Field</th><th>Required</th><th>Type</th>'
        "<th>Description</th></tr>{}</table></section>",
        name,
        name,
        rows,
    )


DOCS_CSS = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 960px; margin: 2rem auto; padding: 0 1rem; color: #222; }
h1 small { color: #777; font-size: 60%; } h2 { border-bottom: 1px solid #ddd; margin-top: 2.5rem; }
section.op { border: 1px solid #e3e3e3; border-radius: 6px; padding: 0 1rem; margin: 1rem 0; }
.method { display: inline-block; min-width: 4.5em; padding: 0 .4em; border-radius: 4px; color: #fff;
          font-size: 80%; text-align: center; }
.get { background: #2f7d32; } .post { background: #1565c0; } .delete { background: #c62828; }
.put, .patch { background: #ef6c00; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0; font-size: 90%; }
th, td { border: 1px solid #e3e3e3; padding: .25rem .5rem; text-align: left; vertical-align: top; }
code { background: #f5f5f5; padding: 0 .2em; border-radius: 3px; }
"""
