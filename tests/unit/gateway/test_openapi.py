"""The gateway's OpenAPI document says how it answers errors: as problems, a 400 for a bad
request (never FastAPI's default 422, which the app does not send)."""

from __future__ import annotations

from api_gateway.app import create_app
from api_gateway.settings import GatewaySettings

from shared.problems import PROBLEM_MEDIA_TYPE

PROBLEM = {"schema": {"$ref": "#/components/schemas/Problem"}}


def test_every_operation_documents_its_errors_as_problems() -> None:
    document = create_app(GatewaySettings()).openapi()
    operations = [
        (path, method, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]
    assert len(operations) > 70
    for path, method, operation in operations:
        responses = operation["responses"]
        assert "422" not in responses, (method, path)
        assert responses["400"]["content"][PROBLEM_MEDIA_TYPE] == PROBLEM, (method, path)
        assert responses["default"]["content"][PROBLEM_MEDIA_TYPE] == PROBLEM, (method, path)
    schemas = document["components"]["schemas"]
    assert schemas["Problem"]["required"] == ["type", "title", "status"]
    assert "HTTPValidationError" not in schemas


def test_a_routes_own_error_responses_keep_their_words() -> None:
    document = create_app(GatewaySettings()).openapi()
    stow = document["paths"]["/dicomweb/studies"]["post"]["responses"]
    assert stow["415"]["description"] == 'Not multipart/related; type="application/dicom"'
    assert stow["415"]["content"][PROBLEM_MEDIA_TYPE] == PROBLEM


def test_qido_rs_and_the_metrics_document_the_media_types_they_answer() -> None:
    """Found by schemathesis: QIDO-RS said application/json and /metrics said JSON."""
    document = create_app(GatewaySettings()).openapi()
    for path in ("/dicomweb/studies", "/dicomweb/studies/{study}/series/{series}/instances"):
        assert list(document["paths"][path]["get"]["responses"]["200"]["content"]) == [
            "application/dicom+json"
        ]
    metrics = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
