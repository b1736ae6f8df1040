//! Tables as Docker's CLI prints them (Go's tabwriter with a minimum width
//! of 10 and a padding of 3): left-aligned columns, each as wide as its
//! widest cell plus three spaces, the last one unpadded.

/// Minimum width of a column, padding included (Docker's).
const MIN_WIDTH: usize = 10;
/// Spaces after the widest cell of a column.
const PADDING: usize = 3;

pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// One row; missing cells are empty, extra cells are dropped.
    pub fn row(&mut self, mut cells: Vec<String>) {
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let headers: Vec<String> = self.headers.iter().map(|h| (*h).to_string()).collect();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if i + 1 < n {
                    let width = (widths[i] + PADDING).max(MIN_WIDTH);
                    let pad = width - cell.chars().count();
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_left_aligned_with_three_spaces() {
        let mut t = Table::new(&["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]);
        t.row(vec![
            "abc123def456".into(),
            "web".into(),
            "replicated".into(),
            "2/3".into(),
            "nginx:1.27".into(),
            "*:8080->80/tcp".into(),
        ]);
        t.row(vec!["x".into(), "api".into(), "global".into()]);
        let out = t.render();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "ID             NAME      MODE         REPLICAS   IMAGE        PORTS"
        );
        assert_eq!(
            lines[1],
            "abc123def456   web       replicated   2/3        nginx:1.27   *:8080->80/tcp"
        );
        assert_eq!(lines[2], "x              api       global");
    }
}
