//! Language models: the built-in transformer (`model`) and its training loop
//! (`train`), ONNX export and the ONNX Runtime wrapper (`onnx`), finding
//! the runtime library (`ortlib`), and checkpoint evaluation over a corpus
//! (`eval`). Nothing here knows of seeds, stages or the store.

pub mod eval;
pub mod model;
pub mod onnx;
pub mod ortlib;
pub mod train;
