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

// Reviewer decisions: one per sample card, kept in localStorage for this run, exported as review.csv.
(() => {
  const runId = document.body.dataset.runId;
  const storageKey = `gradcam-audit:review:${runId}`;
  const load = () => JSON.parse(localStorage.getItem(storageKey) || "{}");
  const save = (decisions) => localStorage.setItem(storageKey, JSON.stringify(decisions));
  const cards = Array.from(document.querySelectorAll("figure.card[data-sample]"));
  const count = document.getElementById("review-count");

  const show = () => {
    const decisions = load();
    cards.forEach((card) => {
      const decision = decisions[card.dataset.sample];
      card.querySelectorAll("input[type=radio]").forEach((radio) => {
        radio.checked = Boolean(decision) && radio.value === decision.decision;
      });
      if (decision && decision.decision === "relabel") card.querySelector("select").value = decision.new_label;
      card.classList.toggle("decided", Boolean(decision));
    });
    if (count) count.textContent = String(Object.keys(decisions).length);
  };

  const record = (card) => {
    const checked = card.querySelector("input[type=radio]:checked");
    if (!checked) return;
    const decisions = load();
    decisions[card.dataset.sample] = {
      decision: checked.value,
      new_label: checked.value === "relabel" ? card.querySelector("select").value : "",
    };
    save(decisions);
    show();
  };

  cards.forEach((card) => {
    card.querySelectorAll("input[type=radio]").forEach((radio) => radio.addEventListener("change", () => record(card)));
    card.querySelector("select").addEventListener("change", () => record(card));
  });

  // RFC 4180: quote every field, double the quotes inside.
  const field = (value) => `"${String(value).replace(/"/g, '""')}"`;
  const exportButton = document.getElementById("review-export");
  if (exportButton) {
    exportButton.addEventListener("click", () => {
      const rows = [["run_id", "sample_id", "decision", "new_label"]];
      Object.entries(load()).sort().forEach(([sample, d]) => rows.push([runId, sample, d.decision, d.new_label]));
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
  if (clearButton) {
    clearButton.addEventListener("click", () => {
      localStorage.removeItem(storageKey);
      show();
    });
  }
  show();
})();
