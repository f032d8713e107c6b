mod config; mod problem; mod store; fn main() {}
