// Live status changes from GET /events (server-sent events, `event: status`).
//
// The feed may miss changes: before it first opens, while the browser reconnects, or when
// the server says so (`event: gap`). Each time, `onResync` runs, and the view re-reads what
// it shows. When /events cannot be opened at all, the feed keeps trying, slower and slower,
// and resyncs at each try, so a view still moves forward (by polling) without it.

const MAX_IDS_IN_URL = 20; // more than this: follow every change and keep the ones wanted
const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 5000;

export class StatusFeed {
  /**
   * @param {object} handlers
   * @param {(change: object) => void} handlers.onChange one status change
   * @param {() => void} handlers.onResync changes may have been missed: read again
   * @param {(state: string) => void} [handlers.onState] "live", "connecting", "polling", "off"
   */
  constructor({ onChange, onResync, onState = () => {} }) {
    this.onChange = onChange;
    this.onResync = onResync;
    this.onState = onState;
    this.url = null;
    this.source = null;
    this.timer = null;
    this.retryMs = RETRY_MIN_MS;
    this.lastId = null; // the id of the last change seen
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
    if (url === this.url && (this.source || this.timer)) return false;
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
    this.source?.close();
    this.source = null;
    clearTimeout(this.timer);
    this.timer = null;
  }

  open(resume = null) {
    // Resuming (new filters, same reader): the server sends what came since, or a gap.
    const url = resume ? `${this.url}${this.url.includes("?") ? "&" : "?"}last_event_id=${encodeURIComponent(resume)}` : this.url;
    const source = new EventSource(url);
    let resumed = Boolean(resume);
    this.source = source;
    this.onState("connecting");
    source.addEventListener("open", () => {
      this.retryMs = RETRY_MIN_MS;
      this.onState("live");
      if (!resumed) this.onResync(); // whatever changed before (or while) we connected
      resumed = false;
    });
    source.addEventListener("status", (e) => {
      let change;
      try {
        change = JSON.parse(e.data);
      } catch {
        return;
      }
      if (e.lastEventId) this.lastId = e.lastEventId;
      if (change && typeof change === "object" && change.upload_id) this.onChange(change);
    });
    source.addEventListener("gap", () => this.onResync());
    source.addEventListener("error", () => {
      if (this.source !== source) return;
      if (source.readyState !== EventSource.CLOSED) {
        this.onState("connecting"); // the browser reconnects by itself; "open" resyncs
        return;
      }
      // Refused (no /events here, or an error answer): poll, and try again later.
      this.source = null;
      this.onState("polling");
      this.onResync();
      this.timer = setTimeout(() => {
        this.timer = null;
        if (this.url && !this.source) this.open(this.lastId);
      }, this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS);
    });
  }
}

/** Text for a feed state, shown beside a live view. */
export function feedLabel(el, state) {
  el.dataset.state = state;
  el.textContent = {
    live: "live",
    connecting: "connecting…",
    polling: "live feed unavailable: polling",
    off: "",
  }[state] ?? "";
  el.title = state === "polling" ? "GET /events could not be opened; statuses are re-read every few seconds" : "";
}
