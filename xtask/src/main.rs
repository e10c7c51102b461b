fn main() {
    eprintln!("xtask: not yet written");
    std::process::exit(1);
}
