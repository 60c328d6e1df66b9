// The admin API with the signed-in token, and the live event feed.

const TOKEN_KEY = "quorum.dashboard.token";

// sessionStorage: the token lives as long as this tab, and never in a cookie the browser would
// send by itself.
export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

export class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${token.get()}`, ...extra };
}

async function failure(response) {
  let detail = response.statusText;
  try {
    const body = await response.json();
    detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch {
    // not JSON: the status text says enough
  }
  return new ApiError(response.status, detail);
}

export async function api(path, { method = "GET", body } = {}) {
  const response = await fetch(path, {
    method,
    cache: "no-store",
    headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw await failure(response);
  return response.json();
}

/** Every item of a paginated listing (`offset` / `limit`). */
export async function all(path, limit = 1000) {
  const items = [];
  for (;;) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api(`${path}${sep}offset=${items.length}&limit=${limit}`);
    items.push(...page);
    if (page.length < limit) return items;
  }
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });

/**
 * The id of the newest event (0 when there is none), in a few small requests however long the
 * log: the smallest `after` that lists nothing, found by doubling then halving.
 */
export async function lastEventId() {
  const any = async (after) => (await api(`/api/v1/events?after=${after}&limit=1`)).length > 0;
  if (!(await any(0))) return 0;
  let lo = 0;
  let hi = 1;
  while (await any(hi)) [lo, hi] = [hi, hi * 2];
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (await any(mid)) lo = mid;
    else hi = mid;
  }
  return hi;
}

/** The events stored after `after`, read to the end in pages; returns the last id seen. */
export async function catchUp(after, onEvent) {
  const limit = 5000;
  for (;;) {
    const page = await api(`/api/v1/events?after=${after}&limit=${limit}`);
    for (const event of page) onEvent(event);
    if (page.length) after = page[page.length - 1].id;
    if (page.length < limit) return after;
  }
}

/**
 * Calls onEvent for every event stored after `after`, as it is stored, until `signal` aborts.
 * Reads the server-sent event stream with fetch (EventSource cannot send the Authorization
 * header); where the server has no stream route, polls `GET /api/v1/events?after=`.
 * onState("stream" | "polling" | "off", detail) says which, and when the feed is down.
 * A refused token (401) ends the feed through onUnauthorized.
 */
export async function follow(after, { onEvent, onState, onUnauthorized, signal }) {
  let last = after;
  const seen = (event) => {
    if (event.id <= last) return; // a resumed stream may repeat what polling already saw
    last = event.id;
    onEvent(event);
  };
  let polling = false;
  let backoff = 1000;
  while (!signal.aborted) {
    try {
      if (!polling) {
        polling = !(await stream(last, seen, onState, signal));
        if (polling) continue;
      } else {
        onState("polling");
        const before = last;
        last = await catchUp(last, seen);
        if (last === before) await sleep(2000, signal);
      }
      backoff = 1000;
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof ApiError && error.status === 401) {
        onState("off", "token refused");
        onUnauthorized();
        return;
      }
      onState("off", String(error.message || error));
      await sleep(backoff, signal);
      backoff = Math.min(backoff * 2, 15000);
    }
  }
}

/** One connection to the stream; false when the server has no stream route. */
async function stream(after, onEvent, onState, signal) {
  const response = await fetch(`/api/v1/events/stream?after=${after}`, {
    cache: "no-store",
    headers: headers({ Accept: "text/event-stream", "Last-Event-ID": String(after) }),
    signal,
  });
  if (response.status === 404 || response.status === 405) return false;
  if (!response.ok) throw await failure(response);
  onState("stream");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error("the event stream ended");
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data) onEvent(JSON.parse(data)); // comment lines (": keep-alive") carry no data
    }
  }
}
