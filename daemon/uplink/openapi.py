"""The OpenAPI 3.0 document of the uplink API, served at ``/v1/openapi.json``.

Written by hand next to the routes (``daemon/uplink/api.py``); tests/uplink run schemathesis
against it, so a response the document does not describe fails the suite.
"""

from __future__ import annotations

from typing import Any

from daemon.uplink.store import ImageStatus

NULLABLE_STR = {"type": "string", "nullable": True}
NULLABLE_NUM = {"type": "number", "nullable": True}
PROBS = {"type": "object", "additionalProperties": {"type": "number"}}
IMAGE_ID = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _err(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _link(path: str) -> dict[str, Any]:
    """An OpenAPI link from an accepted image to a GET on ``path`` with its id."""
    ref = path.replace("~", "~0").replace("/", "~1")
    return {"operationRef": f"#/paths/{ref}/get", "parameters": {"id": "$response.body#/id"}}


UNAUTHORIZED = _err("Missing or wrong bearer token; nothing was done.")

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error", "reason"],
        "properties": {"error": {"type": "string"}, "reason": {"type": "string"}},
    },
    "Gps": {
        "type": "object", "nullable": True, "required": ["latitude", "longitude"],
        "properties": {"latitude": {"type": "number"}, "longitude": {"type": "number"},
                       "altitude": NULLABLE_NUM},
    },
    "Accepted": {
        "type": "object", "required": ["id", "status", "location", "duplicate"],
        "properties": {"id": IMAGE_ID,
                       "status": {"type": "string",
                                  "enum": [s.value for s in ImageStatus]},
                       "location": {"type": "string"}, "duplicate": {"type": "boolean"}},
    },
    "Image": {
        "type": "object",
        "required": ["id", "status", "reason", "source", "mission", "drone", "captured_at",
                     "received_at", "image", "gps", "labels", "probs", "model", "location"],
        "properties": {
            "id": IMAGE_ID,
            "status": {"type": "string", "enum": [s.value for s in ImageStatus]},
            "reason": NULLABLE_STR,
            "source": {"type": "string", "enum": ["api", "watch"]},
            "mission": NULLABLE_STR, "drone": NULLABLE_STR, "captured_at": NULLABLE_STR,
            "received_at": {"type": "number"}, "started_at": NULLABLE_NUM,
            "finished_at": NULLABLE_NUM,
            "image": {"type": "object", "properties": {
                "content_type": {"type": "string"}, "format": NULLABLE_STR,
                "width": {"type": "integer", "nullable": True},
                "height": {"type": "integer", "nullable": True},
                "bytes": {"type": "integer"}, "stored": {"type": "boolean"}}},
            "gps": _ref("Gps"),
            "labels": {"type": "array", "items": {"type": "string"}, "nullable": True},
            "probs": {**PROBS, "nullable": True},
            "model": {"type": "object", "nullable": True, "properties": {
                "name": {"type": "string"}, "version": {"type": "string"},
                "backend": {"type": "string"}}},
            "location": {"type": "string"},
            "tiles": {"type": "array", "nullable": True, "items": {
                "type": "object", "required": ["box", "probs"],
                "properties": {"box": {"type": "array", "items": {"type": "integer"},
                                       "minItems": 4, "maxItems": 4},
                               "probs": PROBS}}},
            "timings": {**PROBS, "nullable": True},
            "warnings": {"type": "array", "items": {"type": "string"}},
            "overlay": {"type": "string"},
        },
    },
    "ImagePage": {
        "type": "object", "required": ["items", "next_cursor"],
        "properties": {"items": {"type": "array", "items": _ref("Image")},
                       "next_cursor": NULLABLE_STR},
    },
    "Mission": {
        "type": "object",
        "required": ["mission", "images", "processed", "status", "label_counts", "defects"],
        "properties": {
            "mission": {"type": "string"}, "images": {"type": "integer"},
            "processed": {"type": "integer"},
            "status": {"type": "object", "additionalProperties": {"type": "integer"}},
            "label_counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "defects": {"type": "array", "items": {
                "type": "object", "properties": {
                    "image": IMAGE_ID, "labels": {"type": "array", "items": {"type": "string"}},
                    "max_probs": PROBS, "gps": _ref("Gps"), "captured_at": NULLABLE_STR}}},
        },
    },
    "FeatureCollection": {
        "type": "object", "required": ["type", "features"],
        "properties": {"type": {"type": "string", "enum": ["FeatureCollection"]},
                       "features": {"type": "array", "items": {"type": "object"}}},
    },
}

ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": IMAGE_ID}
MISSION_PARAM = {"name": "mission", "in": "path", "required": True, "schema": NAME}
BINARY = {"schema": {"type": "string", "format": "binary"}}


def openapi_document() -> dict[str, Any]:
    not_found = _err("No such image or mission.")
    return {
        "openapi": "3.0.3",
        "info": {"title": "Spoke drone uplink", "version": "1",
                 "description": "Authenticated image ingestion and results of a Spoke "
                                "appliance. Raw images stay on the appliance."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": SCHEMAS,
        },
        "security": [{"bearer": []}],
        "paths": {
            "/readyz": {"get": {
                "summary": "Ready only while a model is active.", "security": [],
                "responses": {"200": _json({"type": "object"}, "A model is active."),
                              "503": _json({"type": "object"}, "No model is active.")}}},
            "/v1/images": {
                "post": {
                    "summary": "Submit a drone image (raw body or multipart with metadata).",
                    "parameters": [
                        {"name": "mission", "in": "query", "schema": NAME},
                        {"name": "drone", "in": "query", "schema": NAME},
                        {"name": "captured_at", "in": "query",
                         "schema": {"type": "string", "format": "date-time"}},
                    ],
                    "requestBody": {"required": True, "content": {
                        "image/jpeg": BINARY, "image/png": BINARY, "image/tiff": BINARY,
                        "multipart/form-data": {"schema": {
                            "type": "object", "required": ["image"],
                            "properties": {
                                "image": {"type": "string", "format": "binary"},
                                "mission": NAME, "drone": NAME,
                                "captured_at": {"type": "string", "format": "date-time"}}}},
                    }},
                    "responses": {
                        "202": {**_json(_ref("Accepted"),
                                        "Stored durably and queued (or already known: "
                                        "the same image is never computed twice)."),
                                "headers": {"Location": {"schema": {"type": "string"}}},
                                # What a client does next with the id (and what a stateful
                                # fuzzer follows).
                                "links": {
                                    "GetResult": _link("/v1/images/{id}"),
                                    "GetOverlay": _link("/v1/images/{id}/overlay.png"),
                                }},
                        "400": _err("Malformed metadata or multipart body."),
                        "401": UNAUTHORIZED,
                        "413": _err("Body over the limit, or too many pixels (a "
                                    "decompression bomb, refused before decoding)."),
                        "415": _err("Not image/jpeg, image/png, image/tiff or multipart."),
                        "422": _err("Empty or corrupt image; the reason is the decoder's."),
                        "429": {**_err("The queue is full."),
                                "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
                        "507": {**_err("The data partition is full; nothing was stored."),
                                "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
                    },
                },
                "get": {
                    "summary": "Images, oldest first, paginated.",
                    "parameters": [
                        {"name": "mission", "in": "query", "schema": {"type": "string"}},
                        {"name": "label", "in": "query", "schema": {"type": "string"}},
                        {"name": "status", "in": "query", "schema": {
                            "type": "string", "enum": [s.value for s in ImageStatus]}},
                        {"name": "since", "in": "query", "schema": {"type": "string"},
                         "description": "Unix seconds or an ISO 8601 time with a zone."},
                        {"name": "limit", "in": "query",
                         "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {"200": _json(_ref("ImagePage"), "One page."),
                                  "400": _err("A bad parameter."), "401": UNAUTHORIZED},
                },
            },
            "/v1/images/{id}": {"get": {
                "summary": "Status, labels, per-tile detections, GPS, model and timings.",
                "parameters": [ID_PARAM],
                "responses": {"200": _json(_ref("Image"), "The image."),
                              "401": UNAUTHORIZED, "404": not_found}}},
            "/v1/images/{id}/overlay.png": {"get": {
                "summary": "The heatmap overlay of a processed image.",
                "parameters": [ID_PARAM],
                "responses": {
                    "200": {"description": "PNG", "content": {"image/png": BINARY}},
                    "401": UNAUTHORIZED, "404": not_found,
                    "409": _err("Not processed yet."),
                    "410": _err("The stored image was removed by retention.")}}},
            "/v1/missions/{mission}": {"get": {
                "summary": "Counts per label, images processed, defects with GPS.",
                "parameters": [MISSION_PARAM],
                "responses": {"200": _json(_ref("Mission"), "The summary."),
                              "401": UNAUTHORIZED, "404": not_found}}},
            "/v1/missions/{mission}.geojson": {"get": {
                "summary": "Defect points as a GeoJSON FeatureCollection.",
                "parameters": [MISSION_PARAM],
                "responses": {
                    "200": {"description": "GeoJSON", "content": {
                        "application/geo+json": {"schema": _ref("FeatureCollection")}}},
                    "401": UNAUTHORIZED, "404": not_found}}},
        },
    }
