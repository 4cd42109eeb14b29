//! Rendering: line charts with bands and marks (`plot`; SVG, PNG, CSV) and
//! a small document model written as HTML and Markdown (`doc`). Neither
//! knows of KL; the report stage fills them.

pub mod doc;
pub mod plot;
