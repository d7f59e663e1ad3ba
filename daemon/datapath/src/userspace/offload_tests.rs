//! Segmentation and coalescing of the TUN offloads against a reference (written by the
//! offload property tests).
