"""Start the gateway: ``api-gateway`` or ``python -m api_gateway``.

``api-gateway keys create NAME --scope admin`` (and ``keys list``, ``keys revoke ID``) manage
API keys straight in the gateway's Redis: how the first admin key is made, before any key can
call ``POST /keys`` (``dicomflow keys``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from api_gateway.access import KeyStore, scopes_of
from api_gateway.app import create_app
from api_gateway.settings import get_settings
from shared.bus import REDIS_DOWN
from shared.logging import configure_logging
from shared.service import connect, run, run_forever


def main(argv: Sequence[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    settings = get_settings()
    if args:
        sys.exit(asyncio.run(manage_keys(args)))
    configure_logging("api-gateway", settings.log_level, settings.log_format)
    run_forever(run(create_app(settings), settings, settings.port))


async def manage_keys(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="api-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    keys = sub.add_parser("keys", help="manage API keys in the gateway's Redis")
    action = keys.add_subparsers(dest="action", required=True)
    create = action.add_parser("create", help="a new key; its secret is printed once")
    create.add_argument("name")
    create.add_argument(
        "--scope", action="append", required=True, choices=["read", "write", "admin"]
    )
    action.add_parser("list", help="every key (never a secret)")
    revoke = action.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("id")
    args = parser.parse_args(argv)

    redis = connect(get_settings())
    store = KeyStore(redis)
    try:
        if args.action == "create":
            key, secret = await store.create(args.name, scopes_of(args.scope))
            print(json.dumps({**key.as_json(), "key": secret}))
        elif args.action == "list":
            for key in await store.list():
                print(json.dumps(key.as_json()))
        elif (revoked := await store.revoke(args.id)) is None:
            print(f"api-gateway: no API key has the id {args.id}", file=sys.stderr)
            return 1
        else:
            print(json.dumps(revoked.as_json()))
    except REDIS_DOWN:
        print("api-gateway: Redis (REDIS_URL) cannot be reached", file=sys.stderr)
        return 2
    finally:
        await redis.aclose()
    return 0


if __name__ == "__main__":
    main()
