fn main() {
    std::process::exit(gaffer::cli::main());
}
