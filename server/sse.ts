/**
 * Server-sent events for GET /api/events: one stream per client, each with its own bounded queue.
 *
 * The training loop emits events synchronously (server/live.ts); a client's listener only
 * enqueues into its stream, so a slow or stuck client can never make training wait. A client
 * whose queue is full is disconnected, not silently thinned: its EventSource reconnects with
 * Last-Event-ID and the stream replays the iterations it missed from the history.
 *
 * Framing (https://html.spec.whatwg.org/multipage/server-sent-events.html):
 *   event: iteration / id: ITER / data: METRICS-LINE-JSON
 *   event: checkpoint / data: {"dir": ..., "iteration": N}
 *   event: end / data: {"state": ..., "error"?: ...}
 *   ": heartbeat" comments keep proxies and idle timeouts from closing a quiet stream.
 *
 * @module
 */
import type { RunEvent, RunSource } from "./status.ts";

/** Options of {@link eventStream}. */
export interface EventStreamOptions {
  /** Replay the history's iterations after this one first (Last-Event-ID or ?since). */
  since?: number;
  /** Milliseconds between heartbeat comments. Default 15000. */
  heartbeatMs?: number;
  /** Events a client may have queued before it is disconnected. Default 256. */
  maxQueued?: number;
  /** Closes the stream (the server is shutting down). */
  signal?: AbortSignal;
  /** Called once when the stream ends, however it ends. */
  onClose?: () => void;
}

/** Milliseconds an EventSource waits before reconnecting. */
const RETRY_MS = 2000;

/** One event in SSE framing. JSON has no raw newlines, so `data` is a single line. */
export function formatEvent(event: RunEvent): string {
  const id = event.type === "iteration" ? `id: ${event.data.iter}\n` : "";
  return `event: ${event.type}\n${id}data: ${JSON.stringify(event.data)}\n\n`;
}

/** A client's event stream: replay (optional), then live events, heartbeats, and `end`. */
export function eventStream(
  source: RunSource,
  options: EventStreamOptions = {},
): ReadableStream<Uint8Array> {
  const heartbeatMs = options.heartbeatMs ?? 15000;
  const maxQueued = options.maxQueued ?? 256;
  const enc = new TextEncoder();
  let cleanup = () => {};
  return new ReadableStream<Uint8Array>({
    start(controller) {
      let closed = false;
      let replaying = true;
      let sentEnd = false;
      let lastReplayed = options.since ?? -Infinity;
      const pending: RunEvent[] = [];
      const finish = () => {
        if (closed) return;
        closed = true;
        unsubscribe();
        clearInterval(timer);
        options.signal?.removeEventListener("abort", onAbort);
        options.onClose?.();
      };
      cleanup = finish;
      const send = (text: string) => {
        if (closed) return;
        // desiredSize counts queued chunks against maxQueued: at 0 the client has stopped
        // reading. Drop it (the queue is discarded) rather than let memory or training wait.
        if ((controller.desiredSize ?? 0) <= 0) {
          finish();
          controller.error(new Error("event stream client fell behind"));
          return;
        }
        controller.enqueue(enc.encode(text));
      };
      const deliver = (e: RunEvent) => {
        if (e.type === "iteration" && e.data.iter <= lastReplayed) return;
        if (e.type === "end") sentEnd = true;
        send(formatEvent(e));
      };
      // Subscribe before reading the history so nothing falls between the two; events that
      // arrive meanwhile wait in `pending` and duplicates of replayed iterations are skipped.
      const unsubscribe = source.subscribe((e) => replaying ? pending.push(e) : deliver(e));
      const onAbort = () => {
        if (closed) return;
        finish();
        controller.close();
      };
      const timer = setInterval(() => send(": heartbeat\n\n"), heartbeatMs);
      options.signal?.addEventListener("abort", onAbort);
      if (options.signal?.aborted) return onAbort();
      (async () => {
        const since = options.since;
        const replay = since === undefined
          ? []
          : (await source.metrics()).filter((l) => l.iter > since);
        const snap = await source.snapshot();
        if (closed) return;
        // The replay goes in as one chunk: it is owed to the client, not a sign of slowness.
        controller.enqueue(
          enc.encode(
            `retry: ${RETRY_MS}\n\n` +
              replay.map((l) => formatEvent({ type: "iteration", data: l })).join(""),
          ),
        );
        if (replay.length > 0) lastReplayed = replay[replay.length - 1].iter;
        replaying = false;
        for (const e of pending.splice(0)) deliver(e);
        // A run that ended before this client came: tell it at once. The stream stays open
        // (heartbeats only) so an EventSource does not reconnect in a loop.
        if (!sentEnd && snap.state !== "running") {
          deliver({
            type: "end",
            data: snap.error === null
              ? { state: snap.state }
              : { state: snap.state, error: snap.error },
          });
        }
      })().catch((e) => {
        if (closed) return;
        finish();
        controller.error(e);
      });
    },
    cancel() {
      cleanup();
    },
  }, new CountQueuingStrategy({ highWaterMark: maxQueued }));
}
