//! Rendering: line charts with bands and marks (`plot`; SVG, PNG, CSV),
//! labelled square matrices as heat maps (`heatmap`), and a small document
//! model written as HTML and Markdown (`doc`). None knows of KL; the report
//! stage fills them.

pub mod doc;
pub mod heatmap;
pub mod plot;
