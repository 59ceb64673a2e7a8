// The review page: reads the run's data (script#review-data) and builds the timeline, the filters and the tracks.
"use strict";
const DATA = JSON.parse(document.getElementById("review-data").textContent);
const PALETTE = ["#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22"];
const STRANGER_COLOUR = "#999";
const SVG = "http://www.w3.org/2000/svg";
// Tracks of a film restored field by field count fields (two a frame).
const UNIT = DATA.pictures_per_frame === 2 ? "field" : "frame";
const state = { flags: new Set(), actors: new Set(DATA.actors.map(actorKey)), sort: "first" };
const rendered = new Set();

function actorKey(actor) { return actor === null ? "" : actor; }
function actorName(actor) { return actor === null ? "stranger (no actor)" : actor; }
function actorColour(actor) {
  const index = DATA.actors.indexOf(actor);
  return actor === null || index < 0 ? STRANGER_COLOUR : PALETTE[index % PALETTE.length];
}
function element(tag, attributes = {}, ...children) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}
function seconds(frame) {
  const pts = DATA.frame_seconds;
  const perFrame = DATA.pictures_per_frame;
  return pts[Math.min(Math.floor(frame / perFrame), pts.length - 1)];
}
function timecode(frame) {
  const s = seconds(frame);
  const minutes = Math.floor(s / 60);
  return `${minutes}:${(s - 60 * minutes).toFixed(2).padStart(5, "0")}`;
}
function media(name) { return `${DATA.files}/${name}`; }

// ---- run facts and timeline

function renderFacts() {
  const table = document.getElementById("facts");
  for (const [name, value] of DATA.facts) table.append(element("tr", {}, element("th", { text: name }), element("td", { text: value })));
}

function lanes(tracks) {
  const ends = [];
  const lane = {};
  for (const track of [...tracks].sort((a, b) => a.first_frame - b.first_frame)) {
    let index = ends.findIndex((end) => end < track.first_frame);
    if (index < 0) { index = ends.length; ends.push(0); }
    ends[index] = track.last_frame;
    lane[track.id] = index;
  }
  return [lane, Math.max(ends.length, 1)];
}

function renderTimeline() {
  const svg = document.getElementById("timeline");
  const width = Math.max(svg.getBoundingClientRect().width, 400), shotHeight = 16, laneHeight = 14, axisHeight = 16;
  const [lane, laneCount] = lanes(DATA.tracks);
  const height = shotHeight + laneCount * (laneHeight + 3) + axisHeight + 4;
  const pictures = DATA.pictures;
  const x = (picture) => (picture / pictures) * width;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.style.height = `${height}px`;
  DATA.shots.forEach((shot, number) => {
    const first = shot.first_frame * DATA.pictures_per_frame, last = (shot.last_frame + 1) * DATA.pictures_per_frame;
    svg.append(element("svg:rect", { class: `shot${number % 2 ? " odd" : ""}`, x: x(first), y: 0, width: x(last) - x(first),
                                     height: height - axisHeight },
                       element("svg:title", { text: `shot ${shot.index}: frames ${shot.first_frame}-${shot.last_frame}` })));
    svg.append(element("svg:text", { class: "shot-label", x: x(first) + 2, y: 11, text: `shot ${shot.index}` }));
  });
  for (const track of DATA.tracks) {
    const bar = element("svg:rect", {
      class: `track-bar${track.flags.length ? " flagged" : ""}`, "data-id": track.id, fill: actorColour(track.actor),
      x: x(track.first_frame), y: shotHeight + lane[track.id] * (laneHeight + 3),
      width: Math.max(x(track.last_frame + 1) - x(track.first_frame), 2), height: laneHeight,
      onclick: () => openTrack(track.id, true),
    }, element("svg:title", { text: `${track.id}: ${actorName(track.actor)}, ${UNIT}s ${track.first_frame}-${track.last_frame}` +
                                    (track.flags.length ? ` (${track.flags.map((f) => DATA.flags[f]).join(", ")})` : "") }));
    svg.append(bar);
  }
  const ticks = Math.max(2, Math.floor(width / 140));
  for (let i = 0; i < ticks; i++) {
    const picture = Math.round((pictures * i) / ticks);
    svg.append(element("svg:text", { class: "axis", x: x(picture), y: height - 3, "text-anchor": i === 0 ? "start" : "middle",
                                     text: `${timecode(picture)} · frame ${Math.floor(picture / DATA.pictures_per_frame)}` }));
  }
  const legend = document.getElementById("legend");
  for (const actor of DATA.actors) {
    legend.append(element("span", {}, element("span", { class: "swatch", style: `background:${actorColour(actor)}` }), actorName(actor)));
  }
  legend.append(element("span", {}, element("span", { class: "swatch", style: "background:#fff;border:2px solid #c00" }), "flagged"));
}

// ---- filters and sorting

function renderControls() {
  const flags = document.getElementById("flag-filters");
  for (const [name, label] of Object.entries(DATA.flags)) {
    const count = DATA.tracks.filter((t) => t.flags.includes(name)).length;
    const box = element("input", { type: "checkbox", value: name, onchange: (event) => {
      event.target.checked ? state.flags.add(name) : state.flags.delete(name);
      applyFilters();
    } });
    flags.append(element("label", { title: DATA.flag_rules[name] }, box, ` ${label} (${count})`));
  }
  const actors = document.getElementById("actor-filters");
  for (const actor of DATA.actors) {
    const box = element("input", { type: "checkbox", value: actorKey(actor), checked: "", onchange: (event) => {
      event.target.checked ? state.actors.add(actorKey(actor)) : state.actors.delete(actorKey(actor));
      applyFilters();
    } });
    const count = DATA.tracks.filter((t) => t.actor === actor).length;
    actors.append(element("label", {}, box, ` ${actorName(actor)} (${count})`));
  }
  if (DATA.tracks.some((t) => t.edits)) {
    flags.append(element("label", { title: "changed by the edits file" }, element("input", { type: "checkbox", value: "edited",
      onchange: (event) => { event.target.checked ? state.flags.add("edited") : state.flags.delete("edited"); applyFilters(); } }),
      ` edited (${DATA.tracks.filter((t) => t.edits).length})`));
  }
  document.getElementById("sort").addEventListener("change", (event) => { state.sort = event.target.value; renderList(); });
  document.getElementById("open-all").addEventListener("click", () => visibleCards().forEach((card) => { card.open = true; }));
  document.getElementById("close-all").addEventListener("click", () => visibleCards().forEach((card) => { card.open = false; }));
}

function visibleCards() { return [...document.querySelectorAll("details.track")].filter((card) => !card.hidden); }

function shown(track) {
  const byFlag = state.flags.size === 0 || track.flags.some((flag) => state.flags.has(flag)) ||
    (state.flags.has("edited") && Boolean(track.edits));
  return byFlag && state.actors.has(actorKey(track.actor));
}

function applyFilters() {
  let count = 0;
  for (const track of DATA.tracks) {
    const visible = shown(track);
    count += visible;
    document.getElementById(`track-${track.id}`).hidden = !visible;
    document.querySelector(`#timeline .track-bar[data-id="${track.id}"]`).classList.toggle("filtered", !visible);
  }
  document.getElementById("shown-count").textContent = `${count} of ${DATA.tracks.length} tracks shown`;
}

const SORTS = {
  first: (a, b) => b.flags.length - a.flags.length || (b.measures.held_back_share || 0) - (a.measures.held_back_share || 0) ||
    a.first_frame - b.first_frame,
  film: (a, b) => a.first_frame - b.first_frame,
  actor: (a, b) => actorName(a.actor).localeCompare(actorName(b.actor)) || a.first_frame - b.first_frame,
  length: (a, b) => b.faces - a.faces,
  identity: (a, b) => identityDrop(b) - identityDrop(a),
};
const MEASURES = {
  identity_drop_max: "largest identity drop, in - out (cosine)",
  self_similarity_min: "lowest output likeness to its input (cosine)",
  held_back_share: "share of faces held back by the identity guard",
  change_max: "largest change of the face, out - in (levels, grain blurred away)",
  low_score_share: "share of faces detected weakly or bridged",
  score_median: "median detection score",
  keypoint_mismatch_max: "largest keypoint / landmark mismatch (of the eye distance)",
};
function identityDrop(track) { return track.guards ? track.guards.identity_in - track.guards.identity_out : -Infinity; }

// ---- tracks

function renderList() {
  const list = document.getElementById("tracks");
  const cards = new Map([...list.children].map((card) => [card.dataset.id, card]));
  for (const track of [...DATA.tracks].sort(SORTS[state.sort])) list.append(cards.get(track.id) || trackCard(track));
  applyFilters();
}

function trackCard(track) {
  const badges = track.flags.map((flag) => element("span", { class: "flag", title: DATA.flag_rules[flag], text: DATA.flags[flag] }));
  if (track.edits) badges.push(element("span", { class: "flag edited", title: "changed by the edits file", text: "edited" }));
  const summary = element("summary", {},
    element("span", { class: "track-id", text: track.id }),
    element("span", { class: "swatch", style: `background:${actorColour(track.actor)}` }),
    `${actorName(track.actor)} · shot ${track.shot} · ${UNIT}s ${track.first_frame}-${track.last_frame} ` +
    `(${timecode(track.first_frame)}-${timecode(track.last_frame)}) · ${track.faces} faces `, ...badges);
  const card = element("details", { class: "track", id: `track-${track.id}`, "data-id": track.id }, summary);
  card.addEventListener("toggle", () => { if (card.open && !rendered.has(track.id)) { rendered.add(track.id); card.append(trackBody(track)); } });
  return card;
}

function openTrack(id, scroll) {
  const card = document.getElementById(`track-${id}`);
  document.querySelectorAll(".current").forEach((node) => node.classList.remove("current"));
  card.classList.add("current");
  document.querySelector(`#timeline .track-bar[data-id="${id}"]`).classList.add("current");
  card.hidden = false;
  card.open = true;
  if (scroll) card.scrollIntoView({ block: "start" });
}

function editsEntry(track) {
  const actor = track.actor === null ? "none" : /^[\w .'-]+$/.test(track.actor) && !/^(none|null|true|false|yes|no|~)$/i.test(track.actor.trim())
    ? track.actor : JSON.stringify(track.actor);
  return `- track: ${track.id}\n  actor: ${actor}    # or none (leave unrestored); strength: 0..1; skip: true`;
}

// One edits entry as the file has it: "line 3: frames 1200-1260, actor: none".
function editText(edit) {
  const settings = Object.entries(edit).filter(([key]) => key !== "line")
    .map(([key, value]) => `${key}: ${Array.isArray(value) ? value.join("-") : value}`);
  return `line ${edit.line}: ${settings.join(", ")}`;
}

function trackBody(track) {
  const body = element("div", { class: "body" });
  const entry = element("pre", { class: "entry", text: editsEntry(track) });
  const copy = element("button", { text: "copy edits entry", onclick: async () => {
    try { await navigator.clipboard.writeText(entry.textContent); copy.textContent = "copied"; }
    catch (error) {
      const range = document.createRange(); range.selectNodeContents(entry);
      getSelection().removeAllRanges(); getSelection().addRange(range);
      copy.textContent = "selected: press Ctrl+C";
    }
  } });
  body.append(element("div", { class: "entry-block" }, entry, copy));
  if (track.edits) body.append(element("p", { class: "note", text: `Edited by the edits file (Run facts): ${track.edits.map(editText).join("; ")}` }));
  body.append(numbers(track));
  if (track.media) {
    body.append(element("h3", { text: "Before / after at 1:1" }), stills(track));
    if (track.media.loop) body.append(loop(track));
  } else {
    body.append(element("p", { class: "muted", text: DATA.media_note }));
  }
  body.append(element("div", { class: "plots" }, ...trackPlots(track), loopPlot(track)));
  return body;
}

function numbers(track) {
  const rows = [[track.actor === null ? "best similarity to a cast member" : "similarity to the actor", track.similarity.toFixed(3)]];
  const g = track.guards;
  if (g) {
    rows.push(["identity in → out (mean)", `${g.identity_in} → ${g.identity_out}`],
      ["flicker (output / input)", g.flicker_ratio ?? "–"],
      ["strength (mean, min)", `${g.strength_mean}, ${g.strength_min}`],
      ["faces held back", g.held_back ? `${g.held_back}: ${Object.entries(g.held_back_why).map(([why, n]) => `${n} ${why}`).join("; ")}` : "0"]);
  }
  if (track.texture_ratio !== undefined) rows.push(["texture kept (output / input, middle face)", track.texture_ratio ?? "–"]);
  for (const [name, value] of Object.entries(track.measures)) rows.push([MEASURES[name] || name, value]);
  return element("div", { class: "numbers" }, ...rows.map(([name, value]) =>
    element("div", {}, element("span", { class: "name", text: `${name}: ` }), String(value))));
}

function stillLabel(label) {
  const flag = label.startsWith("worst: ") ? label.slice(7) : null;
  return flag && DATA.flags[flag] ? `worst for "${DATA.flags[flag]}"` : label;
}

function stills(track) {
  const box = element("div", { class: "stills" });
  for (const still of track.media.stills) {
    const before = element("img", { class: "before", src: media(still.before), alt: `before, ${UNIT} ${still.frame}` });
    const compare = element("div", { class: "compare" }, before);
    let range = null;
    if (still.after) {
      compare.append(element("img", { class: "after", src: media(still.after), alt: `after, ${UNIT} ${still.frame}` }),
                     element("div", { class: "wipe-line" }));
      range = element("input", { type: "range", min: 0, max: 100, value: 50, title: "wipe: before left, after right",
                                 oninput: (event) => { compare.style.setProperty("--wipe", `${event.target.value}%`); compare.className = "compare"; } });
    }
    const modes = ["compare", "compare show-before", "compare show-after"];
    const toggle = still.after ? element("button", { text: "toggle", title: "wipe → before → after", onclick: () => {
      compare.className = modes[(modes.indexOf(compare.className) + 1) % modes.length];
      toggle.textContent = { "compare": "toggle", "compare show-before": "before", "compare show-after": "after" }[compare.className];
    } }) : null;
    const zoom = element("select", { title: "zoom (pixels stay square)", onchange: (event) => {
      for (const image of compare.querySelectorAll("img")) image.style.width = `${image.naturalWidth * event.target.value}px`;
    } }, element("option", { value: 1, text: "1:1" }), element("option", { value: 2, text: "2x" }), element("option", { value: 3, text: "3x" }));
    box.append(element("figure", { class: "still" }, compare,
      element("div", { class: "still-controls" }, still.after ? "before" : null, range, still.after ? "after" : null, toggle, zoom),
      element("figcaption", { text: `${still.labels.map(stillLabel).join(", ")}: ${UNIT} ${still.frame} (${timecode(still.frame)})` })));
  }
  return box;
}

function loop(track) {
  const spec = track.media.loop;
  const video = element("video", { src: media(spec.file), autoplay: "", muted: "", loop: "", playsinline: "",
                                   width: spec.width, height: spec.height, preload: "auto", title: "click: pause / play" });
  video.muted = true;
  const step = (spec.last_frame > spec.first_frame ? spec.seconds / (spec.last_frame - spec.first_frame) : 0.04);
  const playing = element("button", { text: "pause", onclick: () => { video.paused ? video.play() : video.pause(); } });
  video.addEventListener("play", () => { playing.textContent = "pause"; });
  video.addEventListener("pause", () => { playing.textContent = "play"; });
  video.addEventListener("click", () => { video.paused ? video.play() : video.pause(); });
  const frameStep = (sign) => () => { video.pause(); video.currentTime = Math.max(0, video.currentTime + sign * step); };
  const speeds = [1, 0.5, 0.25].map((rate) => element("button", { text: `${rate}x`, onclick: () => { video.playbackRate = rate; } }));
  const scale = spec.scale < 1 ? ` (shown at ${Math.round(spec.scale * 100)}% of the film's pixels)` : " (1:1)";
  return element("div", { class: "loop" },
    element("h3", { text: `Moving: ${UNIT}s ${spec.first_frame}-${spec.last_frame}${scale}` }),
    element("div", { class: "loop-labels", style: `width:${spec.width}px` },
            element("span", { style: "flex:1", text: "before" }), element("span", { style: "flex:1", text: "after" })),
    video, element("div", { class: "still-controls" }, playing,
      element("button", { text: "◀ frame", onclick: frameStep(-1) }), element("button", { text: "frame ▶", onclick: frameStep(1) }),
      "speed", ...speeds));
}

// ---- plots: SVG line charts with axes and units

function niceTicks(low, high, count) {
  const raw = (high - low) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((candidate) => candidate >= raw);
  const ticks = [];
  for (let value = Math.ceil(low / step) * step; value <= high + step * 1e-9; value += step) ticks.push(+value.toPrecision(12));
  return ticks;
}

function linePlot(title, xLabel, yLabel, xs, lines, yRange, marks = []) {
  const width = 420, height = 190, left = 48, right = 130, top = 20, bottom = 34;
  const plotWidth = width - left - right, plotHeight = height - top - bottom;
  const values = lines.flatMap((line) => line.values.filter((v) => v !== null && v !== undefined));
  let [low, high] = yRange || [Math.min(0, ...values), Math.max(...values, 1e-6)];
  if (high <= low) high = low + 1;
  const xMin = Math.min(...xs), xMax = Math.max(...xs, xMin + 1);
  const X = (v) => left + ((v - xMin) / (xMax - xMin)) * plotWidth;
  const Y = (v) => top + plotHeight - ((v - low) / (high - low)) * plotHeight;
  const svg = element("svg:svg", { class: "plot", width, height, viewBox: `0 0 ${width} ${height}` },
                      element("svg:text", { x: left, y: 13, text: title, "font-weight": "bold" }));
  for (const value of niceTicks(low, high, 4)) {
    svg.append(element("svg:line", { class: "grid", x1: left, x2: left + plotWidth, y1: Y(value), y2: Y(value) }),
               element("svg:text", { x: left - 4, y: Y(value) + 3, "text-anchor": "end", text: value }));
  }
  for (const value of niceTicks(xMin, xMax, 4).filter(Number.isInteger)) {
    svg.append(element("svg:text", { x: X(value), y: top + plotHeight + 12, "text-anchor": "middle", text: value }));
  }
  svg.append(element("svg:rect", { x: left, y: top, width: plotWidth, height: plotHeight, fill: "none", class: "frame-axis" }),
             element("svg:text", { x: left + plotWidth / 2, y: height - 6, "text-anchor": "middle", text: xLabel }),
             element("svg:text", { x: 11, y: top + plotHeight / 2, "text-anchor": "middle", transform: `rotate(-90 11 ${top + plotHeight / 2})`, text: yLabel }));
  for (const mark of marks) {
    svg.append(element("svg:line", { x1: X(mark), x2: X(mark), y1: top, y2: top + plotHeight, stroke: "#bbb", "stroke-dasharray": "2 2" }));
  }
  lines.forEach((line, number) => {
    const points = xs.map((x, i) => [x, line.values[i]]).filter(([, v]) => v !== null && v !== undefined);
    svg.append(element("svg:polyline", { fill: "none", stroke: line.colour, "stroke-width": 1.5,
                                         points: points.map(([x, v]) => `${X(x).toFixed(1)},${Y(v).toFixed(1)}`).join(" ") }));
    svg.append(element("svg:line", { x1: left + plotWidth + 10, x2: left + plotWidth + 24, y1: top + 8 + number * 14, y2: top + 8 + number * 14, stroke: line.colour, "stroke-width": 2 }),
               element("svg:text", { x: left + plotWidth + 28, y: top + 11 + number * 14, text: line.label }));
  });
  return svg;
}

function trackPlots(track) {
  const series = track.series;
  if (!series || !series.frame.length) return [element("p", { class: "muted", text: "No guard series (the track was not restored)." })];
  const marks = track.media ? track.media.stills.map((still) => still.frame) : [];
  const identities = [...series.identity_in, ...series.identity_out];
  const pad = 0.02;
  const identityRange = [Math.max(-1, Math.min(...identities) - pad), Math.min(1, Math.max(...identities) + pad)];
  const stranger = track.actor === null;
  return [
    linePlot(stranger ? "Likeness to its own input" : "Identity: likeness to the actor", UNIT, "cosine similarity", series.frame, [
      { label: stranger ? "input (1)" : "input", values: series.identity_in, colour: "#888" },
      { label: "output", values: series.identity_out, colour: "#1f77b4" }], identityRange, marks),
    linePlot("Strength used (the guards)", UNIT, "share of the restoration (0-1)", series.frame, [
      { label: "strength", values: series.strength, colour: "#ff7f0e" }], [0, 1.05], marks),
  ];
}

function loopPlot(track) {
  const measures = track.loop_measures;
  if (!measures) return null;
  const lines = [
    { label: "change (out - in)", values: measures.change, colour: "#d62728" },
    { label: "frame change in", values: measures.frame_change_in, colour: "#888" },
    { label: "frame change out", values: measures.frame_change_out, colour: "#2ca02c" },
  ];
  return linePlot("In the loop: change and flicker", UNIT, "levels (8-bit), face mean", measures.frame, lines, null);
}

// ---- start

renderFacts();
renderTimeline();
renderControls();
renderList();
if (DATA.tracks.length) openTrack([...DATA.tracks].sort(SORTS.first)[0].id, false);
