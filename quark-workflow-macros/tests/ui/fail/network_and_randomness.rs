use quark_workflow::{OrchestrationContext, OrchestrationError, orchestration};

mod getrandom {
    pub fn fill(_: &mut [u8]) {}
}
mod tokio {
    pub mod net {
        pub async fn lookup_host(_: &str) {}
    }
    pub mod signal {
        pub async fn ctrl_c() {}
    }
}

#[orchestration]
async fn outside(_ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
    // Addresses are values, so accepted.
    let _addr = std::net::Ipv4Addr::new(127, 0, 0, 1);
    let _socket = std::net::TcpStream::connect("127.0.0.1:80");
    tokio::net::lookup_host("example.invalid:80").await;
    tokio::signal::ctrl_c().await;
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes);
    let _state = std::hash::RandomState::new();
    Ok(())
}

fn main() {}
