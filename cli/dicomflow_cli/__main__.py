"""``dicomflow``: the command line, its commands and options, and its exit codes.

Exit codes: 0 success; 1 the work did not fully succeed (a file not archived, a problem answer
from the gateway); 2 a usage error or a gateway that cannot be reached (one line, no trace);
130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

import httpx

from dicomflow_cli import __version__, commands, upload
from dicomflow_cli.client import DEFAULT_URL, Gateway, GatewayUnreachable, Problem, UsageError
from dicomflow_cli.output import Output

Handler = Callable[[argparse.Namespace, Gateway, Output], int]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _common(defaults: bool) -> argparse.ArgumentParser:
    """--url, --api-key and --json, accepted before or after the command."""
    parser = argparse.ArgumentParser(add_help=False)
    url_default = os.environ.get("DICOMFLOW_URL") or DEFAULT_URL
    parser.add_argument(
        "--url",
        default=url_default if defaults else argparse.SUPPRESS,
        help=f"the gateway (default: $DICOMFLOW_URL, else {DEFAULT_URL})",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("DICOMFLOW_API_KEY") if defaults else argparse.SUPPRESS,
        help="the API key, when the gateway asks for one (default: $DICOMFLOW_API_KEY)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if defaults else argparse.SUPPRESS,
        help="print the result as JSON, for scripts",
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    common = _common(defaults=False)
    parser = argparse.ArgumentParser(
        prog="dicomflow",
        description="Upload DICOM files to a dicomflow gateway, follow them, search, fetch.",
        parents=[_common(defaults=True)],
        epilog="Exit codes: 0 success, 1 not everything succeeded, 2 usage error or gateway "
        "unreachable.",
    )
    parser.add_argument("--version", action="version", version=f"dicomflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser(
        "upload",
        parents=[common],
        help="upload files and folders, then follow them until archived",
        description="Upload DICOM files (and JPEG/PNG images, which the server converts). "
        "Files the server already has are skipped, so an interrupted upload resumes. "
        "Exit code 0 only when every file ends up on the server.",
    )
    up.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    up.add_argument("-r", "--recursive", action="store_true", help="descend into folders")
    up.add_argument("--label", help="file the uploads under this study label")
    up.add_argument(
        "-c", "--concurrency", type=_positive, default=4, help="requests at once (default 4)"
    )
    up.add_argument(
        "--no-follow", action="store_true", help="stop once sent; do not wait for processing"
    )
    up.add_argument(
        "--timeout",
        type=_seconds,
        default=600.0,
        help="seconds to wait for processing (default 600)",
    )
    up.set_defaults(handler=upload.run)

    st = sub.add_parser(
        "status",
        parents=[common],
        help="show an upload's status",
        description="Show an upload's status. With --watch, print each change until it is "
        "final; exit code 0 then only if it was archived.",
    )
    st.add_argument("id", metavar="ID", help="the upload id (study_id)")
    st.add_argument("-w", "--watch", action="store_true", help="follow it until final")
    st.add_argument("--timeout", type=_seconds, help="with --watch: give up after seconds")
    st.set_defaults(handler=commands.status)

    se = sub.add_parser(
        "search",
        parents=[common],
        help="search the archived studies",
        description="Search the studies the server holds; text filters take * and ?.",
    )
    se.add_argument("--patient-name", help="e.g. 'SMITH*'")
    se.add_argument("--patient-id")
    se.add_argument("--modality", help="e.g. CT or CT,MR")
    se.add_argument("--date-from", metavar="YYYYMMDD", help="study date from (inclusive)")
    se.add_argument("--date-to", metavar="YYYYMMDD", help="study date to (inclusive)")
    se.add_argument("--institution")
    se.add_argument("--accession", help="accession number")
    se.add_argument("--limit", type=_positive, help="studies per page")
    se.add_argument("--offset", type=int, help="studies to skip")
    se.add_argument("--sort", help="e.g. -study_date (- first: descending)")
    se.set_defaults(handler=commands.search)

    gt = sub.add_parser(
        "get",
        parents=[common],
        help="save an upload's PNG, original or de-identified copy",
        description="Save an archived upload's rendering or file.",
    )
    gt.add_argument("id", metavar="ID", help="the upload id (study_id)")
    what = gt.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--png", dest="what", action="store_const", const="png", help="the image, rendered as PNG"
    )
    what.add_argument(
        "--original",
        dest="what",
        action="store_const",
        const="original",
        help="the original DICOM file, byte for byte",
    )
    what.add_argument(
        "--deidentified",
        dest="what",
        action="store_const",
        const="deidentified",
        help="a de-identified DICOM copy",
    )
    gt.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help="where to write it (- for standard output)",
    )
    gt.set_defaults(handler=commands.get)

    ks = sub.add_parser(
        "keys",
        parents=[common],
        help="create, list and revoke API keys (an admin key needed)",
        description="Manage the gateway's API keys. A new key's secret is printed once; the "
        "gateway keeps only its digest.",
    )
    action = ks.add_subparsers(dest="action", required=True, metavar="ACTION")
    kc = action.add_parser("create", parents=[common], help="a new key with a name and scopes")
    kc.add_argument("name", help="who or what holds it, e.g. ct-scanner-1")
    kc.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=["read", "write", "admin"],
        help="repeat for several; admin includes read and write",
    )
    action.add_parser("list", parents=[common], help="every key (never a secret)")
    kr = action.add_parser("revoke", parents=[common], help="revoke a key by its id")
    kr.add_argument("id", metavar="ID")
    ks.set_defaults(handler=commands.keys)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Output(as_json=args.json)
    handler: Handler = args.handler
    try:
        connections = max(getattr(args, "concurrency", 4), 4) + 8
        with Gateway(args.url, connections, api_key=args.api_key) as gw:
            return handler(args, gw, out)
    except (UsageError, GatewayUnreachable) as exc:
        print(f"dicomflow: {exc}", file=sys.stderr)
        return 2
    except Problem as exc:
        print(f"dicomflow: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:  # connected, but the answer broke off or never came
        print(
            f"dicomflow: the gateway at {args.url} did not answer ({type(exc).__name__})",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("dicomflow: interrupted (an upload run again resumes)", file=sys.stderr)
        return 130
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"dicomflow: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
