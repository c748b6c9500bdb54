// The esflow dashboard: status cards, the resolved pipeline, and two live charts (fitness and
// held-out loss against iteration) drawn by vega-embed from the server's own copy of vega.
//
// Data flow: the history comes from GET /api/metrics; while the run is live, each
// `event: iteration` of GET /api/events?since=N adds one metrics line. The server subscribes
// before it replays the lines after N, so nothing falls between the history and the stream,
// and an EventSource that reconnects sends Last-Event-ID (the iteration) to resume where it
// was. Lines are keyed by `iter`, so any overlap is dropped.
//
// Every value from the server is written with textContent, never as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  /** Iteration of the newest metrics line drawn; lines at or below it are duplicates. */
  let lastIter = -1;
  /** The newest line with a held-out loss. */
  let lastEval = null;
  let fitnessView = null, lossView = null;
  /** The reward chart, embedded when the first line of a reward run arrives. */
  let rewardView = null;
  /** Chart updates run one after another: vega views must not run two changesets at once. */
  let drawing = Promise.resolve();
  let events = null;
  let statusTimer = null;
  let finished = false;

  // ---- formatting ---------------------------------------------------------------------------

  const num = (
    x,
    digits = 4,
  ) => (typeof x === "number" && Number.isFinite(x) ? x.toFixed(digits) : "–");
  const sci = (x) => (typeof x === "number" && Number.isFinite(x) ? x.toPrecision(3) : "–");

  function duration(seconds) {
    if (typeof seconds !== "number" || !Number.isFinite(seconds) || seconds < 0) return "–";
    const s = Math.round(seconds);
    if (s < 60) return `${s}s`;
    const m = Math.floor(s / 60), h = Math.floor(m / 60);
    if (h === 0) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
    return `${h}h ${String(m % 60).padStart(2, "0")}m`;
  }

  function bytes(n) {
    if (typeof n !== "number" || !Number.isFinite(n)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
    return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
  }

  function text(id, value) {
    const el = $(id);
    if (el) el.textContent = value;
  }

  // ---- the server ---------------------------------------------------------------------------

  async function getJson(path) {
    const res = await fetch(path, { cache: "no-store" });
    if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
    return await res.json();
  }

  /** /api/metrics answers with the lines, bare or wrapped; either way a list comes back. */
  function metricsList(body) {
    if (Array.isArray(body)) return body;
    if (body && Array.isArray(body.lines)) return body.lines;
    if (body && Array.isArray(body.metrics)) return body.metrics;
    return [];
  }

  // ---- status cards -------------------------------------------------------------------------

  function renderStatus(s) {
    if (!s || typeof s !== "object") return;
    if (s.run) {
      text("run-name", s.run);
      document.title = `esflow · ${s.run}`;
    }
    if (s.pipeline) {
      text("pipeline", s.pipeline);
      $("pipeline-part").hidden = false;
    }
    if (s.adapter) text("adapter", s.adapter);
    const state = s.state ?? "unknown";
    showState(state, s.error);

    const total = s.total;
    if (typeof s.iteration === "number") text("iteration", String(s.iteration));
    if (typeof total === "number") text("total", String(total));
    if (typeof s.iteration === "number" && typeof total === "number" && total > 0) {
      $("progress-bar").style.width = `${Math.min(100, (100 * s.iteration) / total)}%`;
    }
    text(
      "eta",
      state === "running" ? duration(s.eta_seconds) : state === "finished" ? "done" : "–",
    );
    text("memory", bytes(s.planned_memory_bytes));
    if (typeof s.fitness_mean === "number") {
      text("fitness", num(s.fitness_mean));
      text("fitness-range", `max ${num(s.fitness_max)} · min ${num(s.fitness_min)}`);
    }
    if (typeof s.eval_loss === "number" && lastEval === null) {
      text("eval-loss", num(s.eval_loss));
      if (typeof s.eval_iteration === "number") {
        text("eval-loss-iter", `at iteration ${s.eval_iteration}`);
      }
    }
    if (typeof s.sigma === "number") text("sigma", sci(s.sigma));
    if (typeof s.alpha === "number") text("alpha", sci(s.alpha));
    if (typeof s.tokens_per_s === "number") {
      text("tokens-per-s", Math.round(s.tokens_per_s).toLocaleString("en-US"));
    }
    if (typeof s.fitness_std === "number") {
      renderDiagnostics({
        fitness_std: s.fitness_std,
        fitness_spread: s.fitness_spread,
        update_norm_expected: s.update_norm_expected,
        update_ratio_expected: s.update_ratio_expected,
        pair_snr: s.pair_snr,
      });
    }
    return state;
  }

  function showState(state, error) {
    const el = $("state");
    el.textContent = state;
    el.dataset.state = state;
    const err = $("error");
    err.hidden = !error;
    if (error) err.textContent = `error: ${error}`;
  }

  /**
   * The step's diagnostics (pipeline/strategy.ts StepDiagnostics), from a metrics line or the
   * status: fitness std and range, the expected update norm (and its ratio to ‖θ‖ when the run
   * knows ‖θ‖), the antithetic pairs' odd-to-even ratio. A line without them changes nothing.
   */
  function renderDiagnostics(d) {
    if (typeof d.fitness_std !== "number") return;
    text("fitness-std", sci(d.fitness_std));
    text("fitness-spread", `max − min ${sci(d.fitness_spread)}`);
    text("update-norm", sci(d.update_norm_expected));
    text(
      "update-ratio",
      typeof d.update_ratio_expected === "number"
        ? `/ ‖θ‖ = ${sci(d.update_ratio_expected)}`
        : "‖θ‖ not measured",
    );
    const pairs = typeof d.pair_snr === "number";
    text("pair-snr", pairs ? sci(d.pair_snr) : "–");
    text("pair-snr-note", pairs ? "odd / even parts of the pairs" : "needs ≥ 2 antithetic pairs");
  }

  /** Cards from a metrics line as it arrives; /api/status follows with ETA and memory. */
  function renderLine(line) {
    text("iteration", String(line.iter + 1));
    text("fitness", num(line.fitness_mean));
    text("fitness-range", `max ${num(line.fitness_max)} · min ${num(line.fitness_min)}`);
    text("sigma", sci(line.sigma));
    text("alpha", sci(line.alpha));
    text("tokens-per-s", Math.round(line.tokens_per_s).toLocaleString("en-US"));
    renderDiagnostics(line);
    if (typeof line.eval_loss === "number") {
      lastEval = line;
      text("eval-loss", num(line.eval_loss));
      text("eval-loss-iter", `at iteration ${line.iter}`);
    }
    renderReward(line);
  }

  // ---- a reward run (fitness type reward) ---------------------------------------------------

  /** Reward cards and the latest samples from a line of a reward run; others change nothing. */
  function renderReward(line) {
    if (typeof line.reward_mean !== "number") return;
    $("reward-card").hidden = false;
    $("reward-section").hidden = false;
    // A reward run measures θ by its held-out reward: no held-out loss to wait for.
    if (lastEval === null) {
      $("eval-loss-card").hidden = true;
      $("loss-figure").hidden = true;
    }
    text("reward", num(line.reward_mean, 3));
    text("reward-range", `max ${num(line.reward_max, 3)} · min ${num(line.reward_min, 3)}`);
    if (typeof line.eval_reward === "number") {
      $("eval-reward-card").hidden = false;
      text("eval-reward", num(line.eval_reward, 3));
      text("eval-reward-iter", `at iteration ${line.iter}`);
    }
    if (Array.isArray(line.samples)) renderSamples(line.iter, line.samples);
  }

  /** The samples of one evaluation: prompt → completion (reward), as text, never HTML. */
  function renderSamples(iter, samples) {
    const list = $("samples");
    list.replaceChildren();
    for (const s of samples) {
      if (!s || typeof s !== "object") continue;
      const li = document.createElement("li");
      const prompt = document.createElement("code");
      prompt.className = "prompt";
      prompt.textContent = String(s.prompt ?? "");
      const completion = document.createElement("code");
      completion.className = "completion";
      completion.textContent = String(s.completion ?? "");
      const reward = document.createElement("span");
      reward.className = "reward";
      reward.textContent = `(${num(s.reward, 3)})`;
      li.append(prompt, " → ", completion, reward);
      list.append(li);
    }
    text("samples-iter", String(iter));
  }

  /** Fetches and shows /api/status; returns the run's state, or null when unreachable. */
  async function refreshStatus() {
    try {
      return renderStatus(await getJson("/api/status"));
    } catch (e) {
      if (!finished) connection("offline", `server unreachable (${e.message})`);
      return null;
    }
  }

  /** At most one /api/status request per half second, however fast iterations come. */
  function scheduleStatus() {
    if (statusTimer !== null || finished) return;
    statusTimer = setTimeout(() => {
      statusTimer = null;
      refreshStatus();
    }, 500);
  }

  function connection(mode, label) {
    const el = $("connection");
    el.dataset.mode = mode;
    el.textContent = label;
  }

  function finish(label) {
    if (finished) return;
    finished = true;
    if (events) events.close();
    clearTimeout(statusTimer);
    statusTimer = null;
    connection("ended", label);
  }

  // ---- charts -------------------------------------------------------------------------------

  const x = {
    field: "iter",
    type: "quantitative",
    title: "iteration",
    scale: { nice: false },
    axis: { tickMinStep: 1, format: "d" },
  };

  const fitnessSpec = {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    width: "container",
    height: 260,
    autosize: { type: "fit-x", contains: "padding" },
    data: { name: "metrics" },
    encoding: { x },
    layer: [
      {
        mark: { type: "area", opacity: 0.22, color: "#4c78a8" },
        encoding: {
          y: {
            field: "fitness_min",
            type: "quantitative",
            title: "fitness",
            scale: { zero: false },
          },
          y2: { field: "fitness_max" },
        },
      },
      {
        mark: { type: "line", color: "#1f4e79", strokeWidth: 1.8 },
        encoding: { y: { field: "fitness_mean", type: "quantitative" } },
      },
    ],
  };

  const lossSpec = {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    width: "container",
    height: 260,
    autosize: { type: "fit-x", contains: "padding" },
    data: { name: "metrics" },
    mark: {
      type: "line",
      point: { size: 30, color: "#c0392b" },
      color: "#c0392b",
      strokeWidth: 1.8,
    },
    encoding: {
      x,
      y: {
        field: "eval_loss",
        type: "quantitative",
        title: "held-out loss",
        scale: { zero: false },
      },
    },
  };

  const rewardSpec = {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    width: "container",
    height: 260,
    autosize: { type: "fit-x", contains: "padding" },
    data: { name: "metrics" },
    encoding: { x },
    layer: [
      {
        mark: { type: "area", opacity: 0.22, color: "#2e8b57" },
        encoding: {
          y: { field: "reward_min", type: "quantitative", title: "reward", scale: { zero: false } },
          y2: { field: "reward_max" },
        },
      },
      {
        mark: { type: "line", color: "#1e6b40", strokeWidth: 1.8 },
        encoding: { y: { field: "reward_mean", type: "quantitative" } },
      },
      {
        transform: [{ filter: "isValid(datum.eval_reward)" }],
        mark: { type: "point", filled: true, size: 40, color: "#c0392b" },
        encoding: { y: { field: "eval_reward", type: "quantitative" } },
      },
    ],
  };

  async function embed(id, spec) {
    // SVG, so the marks are elements a test can count; ast: vega's expression interpreter,
    // because the page's CSP forbids eval; no actions menu (it links to an online editor).
    const result = await vegaEmbed(`#${id}`, spec, {
      renderer: "svg",
      actions: false,
      ast: true,
      tooltip: true,
    });
    return result.view;
  }

  /** Adds new lines (iter > lastIter) to both charts; the loss chart gets evaluated ones only. */
  function addLines(lines) {
    const fresh = lines
      .filter((l) => l && typeof l.iter === "number" && l.iter > lastIter)
      .sort((a, b) => a.iter - b.iter);
    if (fresh.length === 0) return drawing;
    lastIter = fresh[fresh.length - 1].iter;
    for (const l of fresh) renderLine(l);
    const evals = fresh.filter((l) => typeof l.eval_loss === "number");
    const rewards = fresh.filter((l) => typeof l.reward_mean === "number");
    drawing = drawing.then(async () => {
      fitnessView.change("metrics", vega.changeset().insert(fresh));
      await fitnessView.runAsync();
      bump("fitness-chart", fresh.length);
      if (rewards.length > 0) {
        rewardView ??= await embed("reward-chart", rewardSpec);
        // The chart draws the numbers only: samples stay in the list.
        const points = rewards.map(({ samples: _, ...l }) => l);
        rewardView.change("metrics", vega.changeset().insert(points));
        await rewardView.runAsync();
        bump("reward-chart", rewards.length);
      }
      if (evals.length > 0) {
        lossView.change("metrics", vega.changeset().insert(evals));
        await lossView.runAsync();
        bump("loss-chart", evals.length);
      }
    });
    return drawing;
  }

  /** data-points: how many metrics lines a chart holds (tests read it; so can people). */
  function bump(id, n) {
    const el = $(id);
    el.dataset.points = String(Number(el.dataset.points) + n);
  }

  // ---- live events --------------------------------------------------------------------------

  function openEvents() {
    events = new EventSource(`/api/events?since=${lastIter}`);
    events.addEventListener("open", () => connection("live", "live"));
    events.addEventListener("iteration", (e) => {
      let line;
      try {
        line = JSON.parse(e.data);
      } catch {
        return; // a malformed event must not stop the page
      }
      addLines([line]);
      scheduleStatus();
    });
    events.addEventListener("checkpoint", (e) => {
      let label = e.data;
      try {
        const c = JSON.parse(e.data);
        label = typeof c.iteration === "number" ? `iteration ${c.iteration}` : (c.dir ?? e.data);
      } catch { /* plain text data: show it as it is */ }
      text("checkpoint", label);
    });
    events.addEventListener("end", (e) => {
      // Every iteration event comes before `end` on the stream, so the charts are complete.
      let end = {};
      try {
        end = JSON.parse(e.data) ?? {};
      } catch { /* an end with no details is still the end */ }
      const state = end.state ?? "ended";
      showState(state, end.error);
      if (state !== "running") text("eta", state === "finished" ? "done" : "–");
      // No last /api/status: a training process closes its server as soon as it ends.
      finish(`run ${state}`);
    });
    events.addEventListener("error", () => {
      if (finished) return;
      connection("reconnecting", "reconnecting…");
      // The browser retries by itself; stop only if the run says it is over.
      refreshStatus().then((state) => {
        if (state !== null && state !== "running") finish(`run ${state}`);
      });
    });
  }

  // ---- start --------------------------------------------------------------------------------

  async function main() {
    const [status, config] = await Promise.all([
      getJson("/api/status"),
      getJson("/api/config").catch((e) => ({ error: e.message })),
    ]);
    $("config").textContent = JSON.stringify(config, null, 2);
    [fitnessView, lossView] = await Promise.all([
      embed("fitness-chart", fitnessSpec),
      embed("loss-chart", lossSpec),
    ]);
    renderStatus(status);
    await addLines(metricsList(await getJson("/api/metrics")));
    // A finished run, or a run dir served read-only, has no more events to wait for.
    if (status.state === "running" && !status.read_only) openEvents();
    else finish(status.read_only ? "read-only" : `run ${status.state}`);
    document.body.dataset.ready = "true";
  }

  main().catch((e) => {
    const err = $("error");
    err.textContent = `dashboard: ${e.message}`;
    err.hidden = false;
    connection("offline", "failed to load");
  });
})();
