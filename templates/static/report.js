"use strict";
// Every name from the data (classes, file names, reasons) enters the page as text: elements are built with
// createElement and filled with textContent or append(string), never with innerHTML.

// Sort a table by the clicked column; numeric columns (data-type="num") sort by value, others alphabetically.
document.querySelectorAll("table.sortable").forEach((table) => {
  table.querySelectorAll("th").forEach((th, column) => {
    let ascending = false;
    th.addEventListener("click", () => {
      ascending = !ascending;
      const numeric = th.dataset.type === "num";
      const value = (row) => {
        const cell = row.cells[column];
        const raw = cell.dataset.value ?? cell.textContent.trim();
        return numeric ? (parseFloat(raw) || -Infinity) : raw.toLowerCase();
      };
      const body = table.tBodies[0];
      const rows = Array.from(body.rows).sort((a, b) => {
        const [x, y] = [value(a), value(b)];
        return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
      });
      rows.forEach((row) => body.appendChild(row));
    });
  });
});

// Reviewer decisions, one per sample, shared by the galleries' cards and the explorer: kept in localStorage for
// this run (so they survive a reload), undoable in this page, exported as review.csv.
const review = (() => {
  const runId = document.body.dataset.runId;
  const storageKey = `gradcam-audit:review:${runId}`;
  const decisions = new Map(Object.entries(JSON.parse(localStorage.getItem(storageKey) || "{}")));
  const undoable = [];
  const listeners = [];
  const save = () => localStorage.setItem(storageKey, JSON.stringify(Object.fromEntries(decisions)));
  const changed = () => listeners.forEach((listener) => listener());
  return {
    runId,
    get: (sample) => decisions.get(sample),
    count: () => decisions.size,
    set(sample, decision, newLabel) {
      undoable.push([sample, decisions.get(sample)]);
      decisions.set(sample, { decision, new_label: decision === "relabel" ? newLabel : "" });
      save();
      changed();
    },
    // Take back the last decision made in this page; returns its sample, or null when there is none.
    undo() {
      const last = undoable.pop();
      if (!last) return null;
      const [sample, before] = last;
      if (before) decisions.set(sample, before);
      else decisions.delete(sample);
      save();
      changed();
      return sample;
    },
    clear() {
      decisions.clear();
      undoable.length = 0;
      localStorage.removeItem(storageKey);
      changed();
    },
    sorted: () => Array.from(decisions.entries()).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
    onChange: (listener) => listeners.push(listener),
  };
})();

// A card's keep / relabel to / remove controls: show its sample's decision, record a new one.
const showDecision = (card) => {
  const decision = review.get(card.dataset.sample);
  card.querySelectorAll("input[type=radio]").forEach((radio) => {
    radio.checked = Boolean(decision) && radio.value === decision.decision;
  });
  if (decision && decision.decision === "relabel") card.querySelector("select").value = decision.new_label;
  card.classList.toggle("decided", Boolean(decision));
};
const bindDecision = (card) => {
  const record = () => {
    const checked = card.querySelector("input[type=radio]:checked");
    if (checked) review.set(card.dataset.sample, checked.value, card.querySelector("select").value);
  };
  card.querySelectorAll("input[type=radio]").forEach((radio) => radio.addEventListener("change", record));
  card.querySelector("select").addEventListener("change", record);
  showDecision(card);
};

// The galleries' cards (rendered with the page) and the review bar.
(() => {
  const cards = Array.from(document.querySelectorAll("figure.card[data-sample]"));
  cards.forEach(bindDecision);
  const count = document.getElementById("review-count");
  const show = () => {
    cards.forEach(showDecision);
    if (count) count.textContent = String(review.count());
  };
  review.onChange(show);
  show();

  // RFC 4180: quote every field, double the quotes inside.
  const field = (value) => `"${String(value).replace(/"/g, '""')}"`;
  const exportButton = document.getElementById("review-export");
  if (exportButton) {
    exportButton.addEventListener("click", () => {
      const rows = [["run_id", "sample_id", "decision", "new_label"]];
      review.sorted().forEach(([sample, d]) => rows.push([review.runId, sample, d.decision, d.new_label]));
      const csv = rows.map((row) => row.map(field).join(",")).join("\r\n") + "\r\n";
      const link = document.createElement("a");
      link.href = URL.createObjectURL(new Blob([csv], { type: "text/csv" }));
      link.download = "review.csv";
      document.body.appendChild(link);
      link.click();
      link.remove();
    });
  }
  const clearButton = document.getElementById("review-clear");
  if (clearButton) clearButton.addEventListener("click", () => review.clear());
})();

// An element with properties and children (strings become text nodes).
const element = (tag, properties = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), properties);
  node.append(...children);
  return node;
};

// Base64 -> bytes (Uint8Array.fromBase64 where the browser has it).
const bytes = (base64) => {
  if (Uint8Array.fromBase64) return Uint8Array.fromBase64(base64);
  const binary = atob(base64);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
};

// The explorer: every sample, filtered and sorted in the browser, a page of cards at a time, keyboard review.
(() => {
  const section = document.getElementById("explore");
  if (!section) return;
  const PAGE = 24;  // cards per page
  const DISPLAY = 96;  // side of each card's pictures, in CSS pixels
  const form = section.querySelector("form.explore-filters");
  const status = section.querySelector(".explore-count");
  const progress = section.querySelector(".explore-progress");
  const grid = section.querySelector(".explore-grid");
  const pageOf = section.querySelector(".page-of");
  let data, n, columns, ids, flagNames, flagMask, duplicate, lowerIds;
  let rows = new Uint32Array(0);  // the samples that pass the filters, in sorted order
  let page = 0;
  let cursor = 0;  // position in rows of the card the keys act on
  const state = { class: "", pred: "", duplicate: "", planted: "", q: "", sort: "", order: "desc", flags: [],
    ranges: [] };

  // Columns: a sort key per sample (a typed array) and how a value reads.
  const decode = (column) => {
    if (column.kind === "number") {
      const key = new Float32Array(bytes(column.data).buffer);
      const show = (i) => (Number.isNaN(key[i]) ? "n/a" : Number.isInteger(key[i]) ? String(key[i])
        : String(Number(key[i].toPrecision(4))));
      return { ...column, key, show };
    }
    if (column.kind === "bool") {
      const key = bytes(column.data);
      return { ...column, key, show: (i) => (key[i] ? "yes" : "no") };
    }
    if (column.kind === "category") {
      const key = new Uint16Array(bytes(column.data).buffer);
      return { ...column, key, show: (i) => column.values[key[i]] };
    }
    return { ...column, key: new Uint32Array(bytes(column.rank).buffer), show: (i) => column.values[i] };
  };

  // Flags: each ';'-separated token of the flags column, and relabel_candidate (a relabel reason was given).
  const buildFlags = () => {
    const flags = columns.get("flags");
    const tokens = (text) => (text ? text.split(";") : []);
    const names = new Set();
    if (flags) flags.values.forEach((v) => tokens(v).forEach((t) => names.add(t)));
    flagNames = Array.from(names).sort();
    const reason = columns.get("relabel_reason");
    if (reason) flagNames.push("relabel_candidate");
    const bit = new Map(flagNames.map((name, b) => [name, 1 << b]));
    const maskOf = (text) => tokens(text).reduce((mask, t) => mask | bit.get(t), 0);
    flagMask = new Uint32Array(n);
    if (flags && flags.kind === "category") {
      const masks = flags.values.map(maskOf);
      for (let i = 0; i < n; i++) flagMask[i] = masks[flags.key[i]];
    } else if (flags) {
      for (let i = 0; i < n; i++) flagMask[i] = maskOf(flags.values[i]);
    }
    if (reason) {
      const candidate = bit.get("relabel_candidate");
      for (let i = 0; i < n; i++) if (reason.show(i) !== "") flagMask[i] |= candidate;
    }
    const box = form.querySelector(".flag-filters");
    flagNames.forEach((name) => {
      const input = element("input", { type: "checkbox", name: "flag", value: name });
      box.append(element("label", {}, input, " ", name, " ", element("span", { className: "flag-count" })));
    });
  };

  // --- state <-> address (#explore?class=cat&flag=uses_shortcut&min.border_focus=1.5&sort=...) and form ---------
  const fromHash = () => {
    const hash = location.hash;
    const query = hash.startsWith("#explore?") ? hash.slice("#explore?".length) : "";
    const params = new URLSearchParams(query);
    for (const key of ["class", "pred", "duplicate", "planted", "q", "sort"]) state[key] = params.get(key) || "";
    state.order = params.get("order") === "asc" ? "asc" : "desc";
    state.flags = params.getAll("flag");
    const ranges = new Map();
    for (const [key, value] of params) {
      const bound = key.startsWith("min.") ? "min" : key.startsWith("max.") ? "max" : null;
      if (!bound) continue;
      const column = key.slice(4);
      if (!ranges.has(column)) ranges.set(column, { column, min: "", max: "" });
      ranges.get(column)[bound] = value;
    }
    state.ranges = Array.from(ranges.values());
  };
  const toHash = () => {
    const params = new URLSearchParams();
    for (const key of ["class", "pred", "duplicate", "planted", "q", "sort"]) if (state[key]) params.set(key, state[key]);
    if (state.sort) params.set("order", state.order);
    state.flags.forEach((flag) => params.append("flag", flag));
    state.ranges.forEach((r) => {
      if (r.min !== "") params.set(`min.${r.column}`, r.min);
      if (r.max !== "") params.set(`max.${r.column}`, r.max);
    });
    return `#explore?${params.toString().replace(/\+/g, "%20")}`;
  };
  const numberColumns = () => Array.from(columns.values()).filter((c) => c.kind === "number").map((c) => c.name);
  const rangeRow = (range) => {
    const select = element("select", { className: "range-column" });
    select.setAttribute("aria-label", "column");
    numberColumns().forEach((name) => select.append(element("option", { value: name, textContent: name })));
    select.value = range.column;
    const bound = (name, value) => {
      const input = element("input", { type: "number", step: "any", className: name, value, size: 6 });
      input.setAttribute("aria-label", name);
      return input;
    };
    const remove = element("button", { type: "button", className: "remove-range", textContent: "\u00d7" });
    remove.setAttribute("aria-label", "remove this range");
    const row = element("span", { className: "range" }, select, " from ", bound("min", range.min), " to ",
      bound("max", range.max), " ", remove);
    remove.addEventListener("click", () => {
      row.remove();
      changed();
    });
    return row;
  };
  const toForm = () => {
    for (const key of ["class", "pred", "duplicate", "planted", "q", "sort", "order"]) form.elements[key].value = state[key];
    form.querySelectorAll("input[name=flag]").forEach((box) => {
      box.checked = state.flags.includes(box.value);
    });
    const box = form.querySelector(".range-filters");
    box.querySelectorAll(".range").forEach((row) => row.remove());
    state.ranges.filter((r) => columns.has(r.column)).forEach((r) => box.insertBefore(rangeRow(r), box.lastElementChild));
  };
  const fromForm = () => {
    for (const key of ["class", "pred", "duplicate", "planted", "q", "sort", "order"]) state[key] = form.elements[key].value;
    state.flags = Array.from(form.querySelectorAll("input[name=flag]:checked"), (box) => box.value);
    state.ranges = Array.from(form.querySelectorAll(".range"), (row) => ({
      column: row.querySelector(".range-column").value, min: row.querySelector(".min").value,
      max: row.querySelector(".max").value,
    }));
  };

  // --- filter and sort --------------------------------------------------------------------------------------
  // Each test carries a bit; a sample's failed bits tell both whether it matches and, for the class selects,
  // how many samples each choice would give with every other filter kept.
  const CLASS_BIT = 1;
  const PRED_BIT = 2;
  const OTHER_BIT = 4;
  const tests = () => {
    const out = [];
    const label = columns.get("label").key;
    const pred = columns.get("pred").key;
    const k = data.classes.indexOf(state.class);
    if (state.class) out.push([CLASS_BIT, (i) => label[i] === k]);
    const p = data.classes.indexOf(state.pred);
    if (state.pred) out.push([PRED_BIT, (i) => pred[i] === p]);
    const need = state.flags.reduce((mask, flag) => mask | (flagNames.includes(flag) ? 1 << flagNames.indexOf(flag) : 0), 0);
    if (need) out.push([OTHER_BIT, (i) => (flagMask[i] & need) === need]);
    if (state.duplicate) {
      const want = state.duplicate === "yes" ? 1 : 0;
      out.push([OTHER_BIT, (i) => duplicate[i] === want]);
    }
    const planted = columns.get("planted");
    if (state.planted && planted) {
      const want = state.planted === "yes" ? 1 : 0;
      out.push([OTHER_BIT, (i) => (planted.key[i] ? 1 : 0) === want]);
    }
    if (state.q) {
      const q = state.q.toLowerCase();
      lowerIds = lowerIds || ids.values.map((id) => id.toLowerCase());
      out.push([OTHER_BIT, (i) => lowerIds[i].includes(q)]);
    }
    state.ranges.forEach((r) => {
      const column = columns.get(r.column);
      if (!column || column.kind !== "number") return;
      const low = r.min === "" ? -Infinity : Number(r.min);
      const high = r.max === "" ? Infinity : Number(r.max);
      const key = column.key;
      out.push([OTHER_BIT, (i) => key[i] >= low && key[i] <= high]);  // NaN is in no range
    });
    return out;
  };
  const filterAndSort = () => {
    const active = tests();
    const label = columns.get("label").key;
    const pred = columns.get("pred").key;
    const classCounts = new Uint32Array(data.classes.length);
    const predCounts = new Uint32Array(data.classes.length);
    const matched = new Uint32Array(n);
    let m = 0;
    for (let i = 0; i < n; i++) {
      let failed = 0;
      for (let t = 0; t < active.length; t++) if (!active[t][1](i)) failed |= active[t][0];
      if (failed === 0) matched[m++] = i;
      if ((failed & ~CLASS_BIT) === 0) classCounts[label[i]]++;
      if ((failed & ~PRED_BIT) === 0) predCounts[pred[i]]++;
    }
    rows = matched.slice(0, m);
    const column = columns.get(state.sort);
    if (column) {
      const key = column.key;
      const sign = state.order === "asc" ? 1 : -1;
      // Missing values (NaN) last in either order; ties keep the audit order.
      rows.sort((a, b) => {
        const x = key[a];
        const y = key[b];
        if (x !== x || y !== y) return (x !== x) - (y !== y) || a - b;
        return (x - y) * sign || a - b;
      });
    }
    return { classCounts, predCounts };
  };

  // --- pictures: thumbnails from sprite sheets (or the dataset's own files), heatmaps from the CAMs ----------
  const images = new Map();  // url -> Image, loaded once
  const image = (url) => {
    if (!images.has(url)) {
      const img = new Image();
      img.src = url;
      images.set(url, img);
    }
    return images.get(url);
  };
  // Draw sample i's thumbnail into a 2D context, once its image has loaded (grey when it cannot be loaded).
  const drawThumbnail = (ctx, i, then) => {
    const source = data.images;
    let img;
    let cell = null;
    if (source.kind === "sprites") {
      const perSheet = source.grid * source.grid;
      const slot = source.slotOf[i];
      img = image(source.sheets[Math.floor(slot / perSheet)]);
      const c = slot % perSheet;
      cell = [(c % source.grid) * source.side, Math.floor(c / source.grid) * source.side, source.side, source.side];
    } else {
      img = image(source.files[i]);
    }
    const draw = () => {
      if (img.naturalWidth === 0) {
        ctx.fillStyle = "#808080";
        ctx.fillRect(0, 0, DISPLAY, DISPLAY);
      } else if (cell) {
        ctx.imageSmoothingEnabled = false;  // small images are enlarged for the eye, pixel by pixel
        ctx.drawImage(img, ...cell, 0, 0, DISPLAY, DISPLAY);
      } else {
        ctx.imageSmoothingEnabled = true;  // the model's view: the whole image, resized to a square
        ctx.drawImage(img, 0, 0, DISPLAY, DISPLAY);
      }
      then();
    };
    if (img.complete) draw();
    else {
      img.addEventListener("load", draw, { once: true });
      img.addEventListener("error", draw, { once: true });
    }
  };
  // Sample i's CAM upsampled (bilinear, pixel centres aligned, as pipeline.heatmaps.upsample) to size x size and
  // scaled to a peak of 1.
  const upsampled = (i, size) => {
    const { height: h, width: w } = data.cams;
    const base = i * h * w;
    const cam = data.cams.values;
    const out = new Float32Array(size * size);
    const axis = (length) => {
      const lo = new Int32Array(size);
      const hi = new Int32Array(size);
      const t = new Float32Array(size);
      for (let j = 0; j < size; j++) {
        const x = Math.min(Math.max((j + 0.5) * length / size - 0.5, 0), length - 1);
        lo[j] = Math.floor(x);
        hi[j] = Math.min(lo[j] + 1, length - 1);
        t[j] = x - lo[j];
      }
      return { lo, hi, t };
    };
    const ys = axis(h);
    const xs = axis(w);
    let peak = 0;
    for (let y = 0; y < size; y++) {
      const top = base + ys.lo[y] * w;
      const bottom = base + ys.hi[y] * w;
      for (let x = 0; x < size; x++) {
        const upper = cam[top + xs.lo[x]] * (1 - xs.t[x]) + cam[top + xs.hi[x]] * xs.t[x];
        const lower = cam[bottom + xs.lo[x]] * (1 - xs.t[x]) + cam[bottom + xs.hi[x]] * xs.t[x];
        const v = upper * (1 - ys.t[y]) + lower * ys.t[y];
        out[y * size + x] = v;
        if (v > peak) peak = v;
      }
    }
    if (peak > 0) for (let j = 0; j < out.length; j++) out[j] /= peak;
    return out;
  };
  // The heatmap (opaque, colour-mapped) and the overlay layer (the same colours, alpha 0.65 x strength, so cold
  // regions show the image unchanged), as the report's Python side draws them.
  const heatLayers = (i) => {
    const values = upsampled(i, DISPLAY);
    const heat = new ImageData(DISPLAY, DISPLAY);
    const layer = new ImageData(DISPLAY, DISPLAY);
    const lut = data.colormap;
    for (let j = 0; j < values.length; j++) {
      const c = 3 * Math.min(255, Math.floor(values[j] * 256));
      for (let channel = 0; channel < 3; channel++) {
        heat.data[4 * j + channel] = lut[c + channel];
        layer.data[4 * j + channel] = lut[c + channel];
      }
      heat.data[4 * j + 3] = 255;
      layer.data[4 * j + 3] = Math.round(0.65 * values[j] * 255);
    }
    return { heat, layer };
  };
  const canvas = (label) => {
    const c = element("canvas", { width: DISPLAY, height: DISPLAY });
    c.setAttribute("role", "img");
    c.setAttribute("aria-label", label);
    return c;
  };

  // --- cards ------------------------------------------------------------------------------------------------
  const value = (name, i) => (columns.has(name) ? columns.get(name).show(i) : "n/a");
  const number = (name, i, digits = 2) => {
    const column = columns.get(name);
    const v = column ? column.key[i] : NaN;
    return Number.isNaN(v) ? "n/a" : v.toFixed(digits);
  };
  const percent = (name, i) => {
    const column = columns.get(name);
    return column && !Number.isNaN(column.key[i]) ? `${Math.round(100 * column.key[i])}%` : "n/a";
  };
  const card = (i, position) => {
    const sample = ids.show(i);
    const [picture, heatmap, overlay] = [canvas(`image ${sample}`), canvas(`heatmap ${sample}`), canvas(`overlay ${sample}`)];
    const { heat, layer } = heatLayers(i);
    heatmap.getContext("2d").putImageData(heat, 0, 0);
    const layerCanvas = element("canvas", { width: DISPLAY, height: DISPLAY });
    layerCanvas.getContext("2d").putImageData(layer, 0, 0);
    drawThumbnail(picture.getContext("2d"), i, () => {
      const ctx = overlay.getContext("2d");
      ctx.drawImage(picture, 0, 0);
      ctx.drawImage(layerCanvas, 0, 0);
    });
    const caption = element("figcaption", {},
      element("code", { textContent: sample }), element("br"),
      "label ", element("b", { textContent: value("label_name", i) }), ", predicted ",
      element("b", { textContent: value("pred_name", i) }), ` (${percent("confidence", i)})`, element("br"),
      `border focus ${number("border_focus", i)}, corner focus ${number("corner_focus", i)}, background ${number("background_attention", i)}`,
      element("br"), `shortcut score ${number("shortcut_score", i)}, relabel score ${number("relabel_score", i)}`);
    if (value("relabel_reason", i)) {
      caption.append(", suggested ", element("b", { textContent: value("suggested_label", i) }), element("br"),
        element("span", { className: "reason", textContent: value("relabel_reason", i) }));
    }
    if (value("flags", i)) caption.append(element("br"), element("span", { className: "flags", textContent: value("flags", i) }));
    if (state.sort && !["border_focus", "corner_focus", "background_attention", "shortcut_score", "relabel_score",
      "confidence", "sample_id"].includes(state.sort)) {
      caption.append(element("br"), `${state.sort}: ${value(state.sort, i)}`);
    }
    const name = `decision-explore-${position}`;
    const radio = (choice, text) => element("label", {}, element("input", { type: "radio", name, value: choice }), ` ${text}`);
    const select = element("select");
    select.setAttribute("aria-label", "new label");
    data.classes.forEach((c) => select.append(element("option", { value: c, textContent: c })));
    select.value = value("suggested_label", i);
    const figure = element("figure", { className: "card explore-card" },
      element("div", { className: "triple" }, picture, heatmap, overlay), caption,
      element("fieldset", { className: "review" }, radio("keep", "keep"), radio("relabel", "relabel to"), select,
        radio("remove", "remove")));
    figure.dataset.sample = sample;
    figure.dataset.position = String(position);
    bindDecision(figure);
    figure.addEventListener("click", () => moveTo(position, false));
    return figure;
  };

  // --- rendering ----------------------------------------------------------------------------------------------
  const showProgress = () => {
    let reviewed = 0;
    for (let j = 0; j < rows.length; j++) if (review.get(ids.values[rows[j]])) reviewed++;
    progress.textContent = `${reviewed.toLocaleString("en")} of ${rows.length.toLocaleString("en")} reviewed.`;
  };
  const renderPage = () => {
    const pages = Math.max(1, Math.ceil(rows.length / PAGE));
    page = Math.min(page, pages - 1);
    const cards = [];
    for (let p = page * PAGE; p < Math.min(rows.length, (page + 1) * PAGE); p++) cards.push(card(rows[p], p));
    grid.replaceChildren(...cards);
    pageOf.textContent = `page ${page + 1} of ${pages}`;
    markCurrent();
  };
  const markCurrent = () => {
    grid.querySelectorAll(".card.current").forEach((c) => c.classList.remove("current"));
    const current = grid.querySelector(`.card[data-position="${cursor}"]`);
    if (current) current.classList.add("current");
    return current;
  };
  const update = () => {
    const { classCounts, predCounts } = filterAndSort();
    status.textContent = `${rows.length.toLocaleString("en")} of ${n.toLocaleString("en")} samples match.`;
    const counted = (select, counts) => select.querySelectorAll("option").forEach((option, j) => {
      if (j > 0) option.textContent = `${data.classes[j - 1]} (${counts[j - 1]})`;
    });
    counted(form.elements.class, classCounts);
    counted(form.elements.pred, predCounts);
    const flagCounts = new Uint32Array(flagNames.length);
    for (let j = 0; j < rows.length; j++) {
      for (let mask = flagMask[rows[j]], b = 0; mask; mask >>>= 1, b++) if (mask & 1) flagCounts[b]++;
    }
    form.querySelectorAll(".flag-count").forEach((span, b) => {
      span.textContent = `(${flagCounts[b]})`;
    });
    page = 0;
    cursor = 0;
    showProgress();
    renderPage();
  };
  const changed = () => {
    fromForm();
    history.replaceState(null, "", toHash());
    update();
  };
  const moveTo = (position, scroll = true) => {
    if (rows.length === 0) return;
    cursor = Math.min(Math.max(position, 0), rows.length - 1);
    if (Math.floor(cursor / PAGE) !== page) {
      page = Math.floor(cursor / PAGE);
      renderPage();
    }
    const current = markCurrent();
    if (current && scroll) current.scrollIntoView({ block: "nearest" });
  };

  // --- keyboard review ----------------------------------------------------------------------------------------
  const typing = (target) => target.matches("select, textarea, input:not([type=radio]):not([type=checkbox])");
  const decide = (decision, newLabel = "") => {
    if (rows.length === 0) return;
    review.set(ids.values[rows[cursor]], decision, newLabel);
    moveTo(cursor + 1);
  };
  document.addEventListener("keydown", (event) => {
    if (!data || typing(event.target) || event.altKey) return;
    const undo = (event.key === "z" && (event.ctrlKey || event.metaKey)) || (event.key === "u" && !event.ctrlKey && !event.metaKey);
    if (event.ctrlKey || event.metaKey) {
      if (!undo) return;
    }
    let handled = true;
    if (undo) {
      const sample = review.undo();
      const position = sample === null ? -1 : rows.findIndex((i) => ids.values[i] === sample);
      if (position >= 0) moveTo(position);
    } else if (event.key === "j" || event.key === "ArrowRight") moveTo(cursor + 1);
    else if (event.key === "k" || event.key === "ArrowLeft") moveTo(cursor - 1);
    else if (event.key === "y") decide("keep");
    else if (event.key === "x") decide("remove");
    else if (/^[0-9]$/.test(event.key) && Number(event.key) < data.classes.length) decide("relabel", data.classes[Number(event.key)]);
    else handled = false;
    if (handled) event.preventDefault();
  });

  // --- start: after the page's first paint, load the data script (a page from file:// may not fetch) ---------
  const start = () => {
    data = window.gradcamAuditData;
    columns = new Map(data.columns.map((column) => [column.name, decode(column)]));
    ids = columns.get("sample_id");
    n = ids.values.length;
    duplicate = bytes(data.duplicate);
    data.cams.values = bytes(data.cams.data);
    data.colormap = bytes(data.colormap);
    if (data.images.kind === "sprites") data.images.slotOf = new Uint32Array(bytes(data.images.slots).buffer);
    buildFlags();
    const sort = form.elements.sort;
    data.columns.forEach((column) => sort.append(element("option", { value: column.name, textContent: column.name })));
    if (columns.has("planted")) section.querySelector(".planted-filter").hidden = false;
    // Text and number boxes filter as they are typed in; everything else when it changes.
    const typed = (event) => event.target.matches("input[type=search], input[type=number]");
    form.addEventListener("input", (event) => typed(event) && changed());
    form.addEventListener("change", (event) => typed(event) || changed());
    form.addEventListener("submit", (event) => event.preventDefault());
    form.querySelector(".add-range").addEventListener("click", (event) => {
      const [first] = numberColumns();
      event.target.before(rangeRow({ column: first, min: "", max: "" }));
    });
    section.querySelector(".prev-page").addEventListener("click", () => moveTo((page - 1) * PAGE));
    section.querySelector(".next-page").addEventListener("click", () => moveTo((page + 1) * PAGE));
    review.onChange(() => {
      grid.querySelectorAll(".card").forEach(showDecision);
      showProgress();
    });
    const fromAddress = () => {
      fromHash();
      toForm();
      update();
    };
    window.addEventListener("hashchange", () => {
      if (!location.hash.startsWith("#explore")) return;
      fromAddress();
      section.scrollIntoView();
    });
    fromAddress();
    if (location.hash.startsWith("#explore")) section.scrollIntoView();
    performance.mark("explorer-ready");
    section.classList.add("ready");
  };
  requestAnimationFrame(() => setTimeout(() => {
    const script = element("script", { src: section.dataset.data });
    script.addEventListener("load", start);
    script.addEventListener("error", () => {
      status.textContent = `The explorer's data (${section.dataset.data}) could not be loaded.`;
    });
    document.body.append(script);
  }, 0));
})();
