//! A small document model rendered twice: a self-contained HTML page (figures
//! as inline SVG, inline CSS, no network resources) and a Markdown summary
//! (figures as relative links). Knows nothing of KL.

use std::fmt::Write as _;

pub enum Block {
    Heading(String),
    Para(String),
    /// A paragraph ending in a link: text, the link's label, its target.
    Link {
        text: String,
        label: String,
        href: String,
    },
    /// Name of the figure's files (without extension), caption, SVG text,
    /// and whether a PNG was written beside the SVG.
    Figure {
        name: String,
        caption: String,
        svg: String,
        png: bool,
    },
    Table {
        header: Vec<String>,
        rows: Vec<Vec<String>>,
        /// Columns to right-align (numbers).
        numeric: Vec<bool>,
    },
}

pub struct Doc {
    pub title: String,
    pub blocks: Vec<Block>,
}

pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// Markdown table cells: pipes and newlines would break the row.
fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

const CSS: &str =
    "body{font-family:sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#222}\
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}\
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}\
th,td{border:1px solid #ccc;padding:.2em .55em}th{background:#f3f3f3}\
td.n{text-align:right;font-variant-numeric:tabular-nums}\
figure{margin:1.2em 0}figcaption{font-size:.9em;color:#444;max-width:900px}\
svg{max-width:100%;height:auto}";

impl Doc {
    pub fn html(&self) -> String {
        let mut h = String::new();
        let _ = write!(
            h,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
            escape(&self.title),
            escape(&self.title)
        );
        for b in &self.blocks {
            match b {
                Block::Heading(t) => {
                    let _ = writeln!(h, "<h2>{}</h2>", escape(t));
                }
                Block::Para(t) => {
                    let _ = writeln!(h, "<p>{}</p>", escape(t));
                }
                Block::Link { text, label, href } => {
                    let _ = writeln!(
                        h,
                        "<p>{} <a href=\"{}\">{}</a></p>",
                        escape(text),
                        escape(href),
                        escape(label)
                    );
                }
                Block::Figure {
                    name, caption, svg, ..
                } => {
                    // The SVG's own XML declaration is not allowed inside HTML.
                    let body = svg.find("<svg").map_or(svg.as_str(), |i| &svg[i..]);
                    let _ = writeln!(
                        h,
                        "<figure id=\"{}\">\n{body}\n<figcaption>{} (data: figures/{}.csv)</figcaption>\n</figure>",
                        escape(name),
                        escape(caption),
                        escape(name)
                    );
                }
                Block::Table {
                    header,
                    rows,
                    numeric,
                } => {
                    h.push_str("<table>\n<tr>");
                    for c in header {
                        let _ = write!(h, "<th>{}</th>", escape(c));
                    }
                    h.push_str("</tr>\n");
                    for r in rows {
                        h.push_str("<tr>");
                        for (i, c) in r.iter().enumerate() {
                            let class = if numeric.get(i).copied().unwrap_or(false) {
                                " class=\"n\""
                            } else {
                                ""
                            };
                            let _ = write!(h, "<td{class}>{}</td>", escape(c));
                        }
                        h.push_str("</tr>\n");
                    }
                    h.push_str("</table>\n");
                }
            }
        }
        h.push_str("</body>\n</html>\n");
        h
    }

    pub fn markdown(&self) -> String {
        let mut m = format!("# {}\n", self.title);
        for b in &self.blocks {
            match b {
                Block::Heading(t) => {
                    let _ = write!(m, "\n## {t}\n");
                }
                Block::Para(t) => {
                    let _ = write!(m, "\n{t}\n");
                }
                Block::Link { text, label, href } => {
                    let _ = write!(m, "\n{text} [{label}]({href})\n");
                }
                Block::Figure {
                    name, caption, png, ..
                } => {
                    let png = if *png {
                        format!("PNG: `figures/{name}.png`, ")
                    } else {
                        String::new()
                    };
                    let _ = write!(
                        m,
                        "\n![{}](figures/{name}.svg)\n\n*{}* ({png}data: `figures/{name}.csv`)\n",
                        md_cell(caption),
                        md_cell(caption)
                    );
                }
                Block::Table {
                    header,
                    rows,
                    numeric,
                } => {
                    m.push('\n');
                    let cells: Vec<String> = header.iter().map(|c| md_cell(c)).collect();
                    let _ = writeln!(m, "| {} |", cells.join(" | "));
                    let rule: Vec<&str> = (0..header.len())
                        .map(|i| {
                            if numeric.get(i).copied().unwrap_or(false) {
                                "---:"
                            } else {
                                "---"
                            }
                        })
                        .collect();
                    let _ = writeln!(m, "| {} |", rule.join(" | "));
                    for r in rows {
                        let cells: Vec<String> = r.iter().map(|c| md_cell(c)).collect();
                        let _ = writeln!(m, "| {} |", cells.join(" | "));
                    }
                }
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_escaped_html_and_markdown() {
        let d = Doc {
            title: "R & D".into(),
            blocks: vec![
                Block::Heading("Tokens".into()),
                Block::Table {
                    header: vec!["text".into(), "kl".into()],
                    rows: vec![vec!["<a|b>".into(), "0.5".into()]],
                    numeric: vec![false, true],
                },
                Block::Figure {
                    name: "conv".into(),
                    caption: "E[conv]".into(),
                    svg: "<?xml version=\"1.0\"?>\n<svg></svg>".into(),
                    png: true,
                },
            ],
        };
        let h = d.html();
        assert!(h.contains("<h1>R &amp; D</h1>"));
        assert!(h.contains("<td>&lt;a|b&gt;</td><td class=\"n\">0.5</td>"));
        assert!(h.contains("<figure id=\"conv\">\n<svg></svg>") && !h.contains("<?xml"));
        let m = d.markdown();
        assert!(m.contains("| text | kl |\n| --- | ---: |\n| <a\\|b> | 0.5 |"));
        assert!(m.contains("![E[conv]](figures/conv.svg)"));
    }
}
