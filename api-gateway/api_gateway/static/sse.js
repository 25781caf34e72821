// Server-sent events read from a fetch() body: the parsing rules of the HTML standard's
// EventSource (https://html.spec.whatwg.org/multipage/server-sent-events.html), which the
// dashboard cannot use itself: an EventSource sends no Authorization header.

/**
 * Turns the text of an event stream, in chunks as they arrive, into events. `onEvent` gets
 * {type, data, lastEventId} for each; `lastEventId` and `retry` (the reconnection time the
 * server asked for, ms, or null) are kept as the stream sets them.
 */
export class EventStreamParser {
  constructor(onEvent, lastEventId = "") {
    this.onEvent = onEvent;
    this.lastEventId = lastEventId; // sent back as Last-Event-ID when reconnecting
    this.retry = null;
    this.buffer = "";
    this.started = false; // a byte-order mark may open the stream, once
    this.afterCR = false; // the last chunk ended in CR: an LF starting this one is the same break
    this.reset();
  }

  reset() {
    this.type = "";
    this.data = "";
    this.idBuffer = this.lastEventId;
  }

  /** A chunk of the stream's text (decoded as UTF-8, as an event stream always is). */
  push(text) {
    if (!this.started && text) {
      this.started = true;
      if (text.startsWith("\uFEFF")) text = text.slice(1);
    }
    if (this.afterCR && text.startsWith("\n")) text = text.slice(1);
    this.afterCR = false;
    this.buffer += text;
    // Lines end with CRLF, LF or CR. A CR at the very end may be half of a CRLF: take the line,
    // and skip an LF that opens the next chunk.
    const lines = this.buffer.split(/\r\n|\r|\n/);
    this.buffer = lines.pop();
    if (this.buffer === "" && text.endsWith("\r")) this.afterCR = true;
    for (const line of lines) this.line(line);
  }

  /** The stream ended: an event not closed by a blank line is dropped, as the standard says. */
  end() {
    this.buffer = "";
    this.reset();
  }

  line(line) {
    if (line === "") {
      this.dispatch();
      return;
    }
    if (line.startsWith(":")) return; // a comment (the server's heartbeat)
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.type = value;
    else if (field === "data") this.data += `${value}\n`;
    else if (field === "id") {
      if (!value.includes("\0")) this.idBuffer = value;
    } else if (field === "retry") {
      if (/^[0-9]+$/.test(value)) this.retry = Number(value);
    } // any other field is ignored
  }

  dispatch() {
    this.lastEventId = this.idBuffer; // even with no data: an id alone moves the cursor
    if (this.data === "") {
      this.type = "";
      return;
    }
    const event = { type: this.type || "message", data: this.data.slice(0, -1), lastEventId: this.lastEventId };
    this.type = "";
    this.data = "";
    this.onEvent(event);
  }
}
