// Live status changes from GET /events (server-sent events, `event: status`), read with
// fetch(): an EventSource cannot send the Authorization header a gateway with access control
// asks for (and a credential never goes in a URL). sse.js parses the stream as EventSource
// would; this reconnects as it would: after the server's `retry`, with `Last-Event-ID`, so the
// server sends what was missed (or `event: gap`).
//
// The feed may miss changes: before it first opens, when the server says so (`event: gap`), or
// when it cannot be opened. Each time, `onResync` runs, and the view re-reads what it shows.
// When /events cannot be opened at all, the feed keeps trying, slower and slower, and resyncs
// at each try, so a view still moves forward (by polling) without it. Refused (401, 403), it
// waits for the next sign-in.

import { request } from "./dom.js";
import { nextSignIn } from "./session.js";
import { EventStreamParser } from "./sse.js";

const MAX_IDS_IN_URL = 20; // more than this: follow every change and keep the ones wanted
const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 5000;
const RECONNECT_MS = 2000; // after a stream that ends, until the server says otherwise

export class StatusFeed {
  /**
   * @param {object} handlers
   * @param {(change: object) => void} handlers.onChange one status change
   * @param {() => void} handlers.onResync changes may have been missed: read again
   * @param {(state: string) => void} [handlers.onState] "live", "connecting", "polling",
   *   "refused", "off"
   */
  constructor({ onChange, onResync, onState = () => {} }) {
    this.onChange = onChange;
    this.onResync = onResync;
    this.onState = onState;
    this.url = null;
    this.reading = null; // the AbortController of the stream being read
    this.timer = null;
    this.retryMs = RETRY_MIN_MS;
    this.reconnectMs = RECONNECT_MS;
    this.lastId = null; // where the stream was: its last event id
  }

  /**
   * Follow these upload ids (an iterable), or every upload (null); nothing to follow stops
   * the feed. Returns true when the feed (re)opens, which resyncs by itself.
   */
  follow(ids) {
    const list = ids === null ? null : [...ids].sort();
    let url = "/events";
    if (list !== null && list.length === 0) url = null;
    else if (list !== null && list.length <= MAX_IDS_IN_URL) {
      url = `/events?upload_id=${list.map(encodeURIComponent).join(",")}`;
    }
    if (url === this.url && (this.reading || this.timer)) return false;
    const resume = this.lastId; // the new stream starts where the old one was
    this.close();
    this.url = url;
    if (!url) {
      this.stop();
      return false;
    }
    this.open(resume);
    return true;
  }

  /** Stop following, and forget where the feed was. */
  stop() {
    this.close();
    this.url = null;
    this.lastId = null;
    this.onState("off");
  }

  close() {
    this.reading?.abort();
    this.reading = null;
    clearTimeout(this.timer);
    this.timer = null;
  }

  /** Read the stream from `resume` (an event id; null: from now, and resync once open). */
  async open(resume = null) {
    const reading = new AbortController();
    this.reading = reading;
    this.onState("connecting");
    const headers = { Accept: "text/event-stream" };
    if (resume) headers["Last-Event-ID"] = resume;
    let res = null;
    try {
      res = await request(this.url, { headers, cache: "no-store", signal: reading.signal });
    } catch {
      // no answer (or closed meanwhile): below
    }
    if (this.reading !== reading) return; // closed, or another stream took over
    const type = res?.headers.get("content-type") || "";
    if (!res?.ok || !res.body || !type.startsWith("text/event-stream")) {
      res?.body?.cancel().catch(() => {});
      if (res && (res.status === 401 || res.status === 403)) this.refused();
      else this.unavailable();
      return;
    }
    this.retryMs = RETRY_MIN_MS;
    this.onState("live");
    if (!resume) this.onResync(); // whatever changed before (or while) we connected
    const parser = new EventStreamParser((event) => this.dispatch(event), resume ?? "");
    try {
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.push(value);
        if (parser.lastEventId) this.lastId = parser.lastEventId;
        if (parser.retry !== null) this.reconnectMs = parser.retry;
      }
    } catch {
      // the connection broke, or the feed was closed
    }
    parser.end();
    if (this.reading !== reading) return;
    // The stream ended (the server stopped, Redis did not answer, the network went): take it
    // up again where it was, as an EventSource does.
    this.reading = null;
    this.onState("connecting");
    this.later(this.reconnectMs);
  }

  dispatch(event) {
    if (event.type === "gap") {
      this.onResync();
    } else if (event.type === "error") {
      this.onState("connecting"); // the server's own: it ends the stream, we come back
    } else if (event.type === "status") {
      let change;
      try {
        change = JSON.parse(event.data);
      } catch {
        return;
      }
      if (change && typeof change === "object" && change.upload_id) this.onChange(change);
    }
  }

  /** Could not be opened (no /events here, an error answer, no network): poll, try later. */
  unavailable() {
    this.reading = null;
    this.onState("polling");
    this.onResync();
    this.later(this.retryMs);
    this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS);
  }

  /** 401 or 403: this credential may not read the feed; try again after the next sign-in. */
  refused() {
    this.reading = null;
    this.onState("refused");
    const url = this.url;
    nextSignIn().then(() => {
      if (this.url === url && !this.reading && !this.timer) this.open(this.lastId);
    });
  }

  later(ms) {
    this.timer = setTimeout(() => {
      this.timer = null;
      if (this.url && !this.reading) this.open(this.lastId);
    }, ms);
  }
}

/** Text for a feed state, shown beside a live view. */
export function feedLabel(el, state) {
  el.dataset.state = state;
  el.textContent = {
    live: "live",
    connecting: "connecting…",
    polling: "live feed unavailable: polling",
    refused: "no live feed for this credential",
    off: "",
  }[state] ?? "";
  el.title = state === "polling" ? "GET /events could not be opened; statuses are re-read every few seconds" : "";
}
