"""HTTP client of the manufacturer admin API (what ``fdo manufacturer vouchers`` calls)."""

from __future__ import annotations

from typing import Any, cast

import httpx


class AdminAPIError(Exception):
    """The admin API answered with an error (``status`` and its ``detail``)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class AdminClient:
    """``/api/v1`` of a manufacturer at ``base_url`` with a bearer token."""

    def __init__(
        self, base_url: str, token: str, *, client: httpx.Client | None = None, timeout: float = 60.0
    ) -> None:
        self.base_url = base_url.rstrip("/") + "/api/v1"
        self._headers = {"Authorization": f"Bearer {token}"}
        self._client = client if client is not None else httpx.Client(timeout=timeout)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._client.request(method, self.base_url + path, headers=self._headers, **kwargs)
        except httpx.HTTPError as exc:
            raise AdminAPIError(0, f"{type(exc).__name__}: {exc}") from exc
        if not response.is_success:
            try:
                detail = str(response.json().get("detail", response.text))
            except ValueError:
                detail = response.text
            raise AdminAPIError(response.status_code, detail)
        return response

    def list_vouchers(self, **filters: str | int | None) -> dict[str, Any]:
        params = {k: v for k, v in filters.items() if v is not None}
        return cast(dict[str, Any], self._request("GET", "/vouchers", params=params).json())

    def export(self, guid: str) -> str:
        return self._request("GET", f"/vouchers/{guid}/pem").text

    def extend(self, guids: list[str], owner_key_pem: str) -> dict[str, Any]:
        if len(guids) == 1:
            one = self._request("POST", f"/vouchers/{guids[0]}/extend", json={"owner_key_pem": owner_key_pem})
            result = cast(dict[str, Any], one.json())
            return {"vouchers": [result], "pem": result["pem"]}
        batch = self._request(
            "POST", "/vouchers/extend", json={"guids": guids, "owner_key_pem": owner_key_pem}
        )
        return cast(dict[str, Any], batch.json())


def open_client(base_url: str, token: str) -> AdminClient:
    """The client the CLI uses (tests replace this to use a TestClient)."""
    return AdminClient(base_url, token)
