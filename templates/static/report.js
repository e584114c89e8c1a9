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
