// Verilator co-simulation harness: a free-running verilated top whose host byte stream
// is bridged to a TCP socket on 127.0.0.1 (the LiteX serial2tcp idea), or to a
// pseudo-terminal that a host opens as it would a board's serial port.
//
// The top (built with --prefix Vtop) must have the ports
//   clk                                       the sync domain's clock (the top makes its own
//                                              reset for its first 4 cycles: sim/top.py)
//   rx__valid, rx__ready, rx__payload[7:0]     bytes from the host (stream into the top)
//   tx__valid, tx__ready, tx__payload[7:0]     bytes to the host (stream out of the top)
// which is what Amaranth generates for In(stream.Signature(8)) / Out(stream.Signature(8)).
//
// Usage: harness [--port P | --pty] [--poll N] [--accept-timeout S] [--bench CYCLES] [--trace FILE]
//   --port P            TCP port on 127.0.0.1, 0..65535; 0 (default) picks a free one. The chosen
//                       port is printed on stdout as "PORT <n>" once listening.
//   --poll N            cycles between socket polls (default 1024): the socket is read and
//                       written with non-blocking calls every N cycles, so the model runs at
//                       near full speed and the host sees at most N cycles of extra latency.
//   --pty               no socket: open a pseudo-terminal (raw mode) and print its device as
//                       "PTY /dev/pts/<n>" on stdout. The harness keeps the terminal open itself,
//                       so hosts may open and close it in turn, as they would a board's port; it
//                       runs until SIGTERM/SIGINT.
//   --accept-timeout S  exit with status 3 when no host connects within S seconds (default 60).
//   --bench CYCLES      no socket: run CYCLES idle cycles and print the bare model's speed.
//   --trace FILE        only in a build with --trace-fst (VM_TRACE): open the FST FILE and dump
//                       every clock edge between a SIGUSR1 (tracing on) and a SIGUSR2 (off), so
//                       a window of a long run is traced without dumping the rest. The FST time
//                       is 2 * cycle (+1 on the rising edge), cycles counted from the end of reset;
//                       "TRACE on|off cycle=N" is printed on stderr at each switch.
//
// One host connection; the harness exits with status 0 when the host disconnects, or on
// SIGTERM/SIGINT, and prints "STATS cycles=... seconds=... rate=... rx=... tx=..." on
// stderr. Bytes from the host wait in a 64 KiB buffer; while the 64 KiB reply buffer is
// full, tx__ready is low (back-pressure into the model).

#include "Vtop.h"
#include "verilated.h"
#if VM_TRACE
#include "verilated_fst_c.h"
#endif

#include <arpa/inet.h>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <memory>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <termios.h>
#include <unistd.h>

// Verilator escapes "__" in port names as "___05F": rx__valid is Vtop::rx___05Fvalid.
#ifndef RX_VALID
#define RX_VALID rx___05Fvalid
#define RX_READY rx___05Fready
#define RX_PAYLOAD rx___05Fpayload
#define TX_VALID tx___05Fvalid
#define TX_READY tx___05Fready
#define TX_PAYLOAD tx___05Fpayload
#endif

namespace {

volatile std::sig_atomic_t g_stop = 0;

void on_signal(int) { g_stop = 1; }

// The host asks for tracing out of band (the byte streams belong to the device): SIGUSR1
// on, SIGUSR2 off. The main loop reads the flag after each read(), so bytes the host sent
// after the signal are never simulated before the switch.
volatile std::sig_atomic_t g_trace = 0;

void on_trace(int sig) { g_trace = sig == SIGUSR1; }

constexpr size_t kBufSize = 64 * 1024;

struct Buffer {
    uint8_t data[kBufSize];
    size_t head = 0;  // next byte to consume
    size_t tail = 0;  // end of valid data
    size_t size() const { return tail - head; }
    void compact() {
        if (head == 0) return;
        std::memmove(data, data + head, tail - head);
        tail -= head;
        head = 0;
    }
};

struct Stats {
    uint64_t cycles = 0;
    uint64_t rx = 0;
    uint64_t tx = 0;
};

double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void print_stats(const char* tag, const Stats& stats, double seconds) {
    std::fprintf(stderr, "%s cycles=%llu seconds=%.6f rate=%.0f rx=%llu tx=%llu\n", tag,
                 (unsigned long long)stats.cycles, seconds,
                 seconds > 0 ? stats.cycles / seconds : 0.0, (unsigned long long)stats.rx,
                 (unsigned long long)stats.tx);
    std::fflush(stderr);
}

// The FST writer of a traced build; in an untraced build every call is empty and inlined
// away, so the untraced model runs at full speed.
struct Tracer {
#if VM_TRACE
    std::unique_ptr<VerilatedFstC> fst;
    bool on = false;

    void open(Vtop* top, const char* path) {
        fst = std::make_unique<VerilatedFstC>();
        top->trace(fst.get(), 99);
        fst->open(path);
    }
    // Follow the host's request (g_trace) when it changed.
    void update(uint64_t cycles) {
        const bool want = fst && g_trace;
        if (want == on) return;
        on = want;
        if (!on) fst->flush();
        std::fprintf(stderr, "TRACE %s cycle=%llu\n", on ? "on" : "off", (unsigned long long)cycles);
        std::fflush(stderr);
    }
    void dump(uint64_t time) {
        if (on) fst->dump(time);
    }
    void close() {
        if (fst) fst->close();
    }
#else
    void update(uint64_t) {}
    void dump(uint64_t) {}
    void close() {}
#endif
};

// One clock cycle: inputs set before the falling half, handshakes sampled on the settled
// combinational outputs, then the rising edge.
template <typename Top>
inline void cycle(Top* top, Buffer& rxbuf, Buffer& txbuf, Stats& stats, Tracer& tracer) {
    const bool have = rxbuf.head < rxbuf.tail;
    top->RX_VALID = have;
    top->RX_PAYLOAD = have ? rxbuf.data[rxbuf.head] : 0;
    top->TX_READY = txbuf.tail < kBufSize;
    top->clk = 0;
    top->eval();
    tracer.dump(2 * stats.cycles);
    const bool rx_fire = have && top->RX_READY;
    const bool tx_fire = top->TX_VALID && top->TX_READY;
    const uint8_t tx_byte = top->TX_PAYLOAD;
    top->clk = 1;
    top->eval();
    tracer.dump(2 * stats.cycles + 1);
    if (rx_fire) {
        ++rxbuf.head;
        ++stats.rx;
    }
    if (tx_fire) {
        txbuf.data[txbuf.tail++] = tx_byte;
        ++stats.tx;
    }
    ++stats.cycles;
}

// A decimal integer in 0..max; anything else (a sign, trailing text, a value that would
// wrap, such as a --port above 65535) ends the harness with status 2 and a message.
int parse_int(const char* text, const char* what, long max = 1000000000L) {
    char* end = nullptr;
    errno = 0;
    long value = std::strtol(text, &end, 10);
    if (!*text || *end || errno == ERANGE || value < 0 || value > max) {
        std::fprintf(stderr, "harness: %s must be an integer from 0 to %ld, not '%s'\n", what, max,
                     text);
        std::exit(2);
    }
    return static_cast<int>(value);
}

// Listen on 127.0.0.1:port, print "PORT <n>", accept one host. Returns its non-blocking
// socket, or -1 (an error), -2 (stopped by a signal), -3 (no host within accept_timeout s).
int accept_host(int port, int accept_timeout) {
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0) {
        std::perror("harness: socket");
        return -1;
    }
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = htons(static_cast<uint16_t>(port));
    if (bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof address) < 0 ||
        listen(listener, 1) < 0) {
        std::perror("harness: bind/listen");
        return -1;
    }
    socklen_t length = sizeof address;
    getsockname(listener, reinterpret_cast<sockaddr*>(&address), &length);
    std::printf("PORT %d\n", ntohs(address.sin_port));
    std::fflush(stdout);

    int client = -1;
    auto waiting = std::chrono::steady_clock::now();
    while (client < 0) {
        if (g_stop) return -2;
        if (accept_timeout > 0 && seconds_since(waiting) > accept_timeout) {
            std::fprintf(stderr, "harness: no host connected within %d s\n", accept_timeout);
            return -3;
        }
        pollfd pfd{listener, POLLIN, 0};
        if (poll(&pfd, 1, 100) > 0) client = accept(listener, nullptr, nullptr);
    }
    close(listener);
    setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(client, F_SETFL, fcntl(client, F_GETFL) | O_NONBLOCK);
    return client;
}

// A pseudo-terminal in raw mode (no echo, no line editing, no CR/LF translation: the
// bytes pass unchanged, as through a USB-serial adapter). Returns the non-blocking master
// and keeps the slave open in *slave: while it is open a host closing the terminal is not
// a hang-up of the master, so the next host can open it again.
int open_pty(int* slave) {
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0 || grantpt(master) < 0 || unlockpt(master) < 0) {
        std::perror("harness: posix_openpt");
        return -1;
    }
    const char* name = ptsname(master);
    *slave = name ? open(name, O_RDWR | O_NOCTTY) : -1;
    termios mode{};
    if (*slave < 0 || tcgetattr(*slave, &mode) < 0) {
        std::perror("harness: open pty slave");
        return -1;
    }
    cfmakeraw(&mode);
    tcsetattr(*slave, TCSANOW, &mode);
    fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK);
    std::printf("PTY %s\n", name);
    std::fflush(stdout);
    return master;
}

}  // namespace

int main(int argc, char** argv) {
    int port = 0;
    int poll_cycles = 1024;
    int accept_timeout = 60;
    long long bench = -1;
    bool use_pty = false;
    const char* trace_path = nullptr;
    for (int i = 1; i < argc; ++i) {
        const char* arg = argv[i];
        const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
        if (!std::strcmp(arg, "--port") && value) {
            port = parse_int(value, "--port", 65535);
            ++i;
        } else if (!std::strcmp(arg, "--poll") && value) {
            poll_cycles = parse_int(value, "--poll");
            if (poll_cycles < 1) poll_cycles = 1;
            ++i;
        } else if (!std::strcmp(arg, "--pty")) {
            use_pty = true;
        } else if (!std::strcmp(arg, "--accept-timeout") && value) {
            accept_timeout = parse_int(value, "--accept-timeout");
            ++i;
        } else if (!std::strcmp(arg, "--bench") && value) {
            bench = std::atoll(value);
            ++i;
        } else if (!std::strcmp(arg, "--trace") && value) {
#if VM_TRACE
            trace_path = value;
            ++i;
#else
            std::fprintf(stderr, "harness: --trace needs a harness built with --trace-fst\n");
            return 2;
#endif
        } else if (std::strncmp(arg, "+verilator", 10) == 0) {
            // passed on to Verilated::commandArgs below
        } else {
            std::fprintf(stderr,
                         "usage: %s [--port P | --pty] [--poll N] [--accept-timeout S] [--bench CYCLES] "
                         "[--trace FILE]\n",
                         argv[0]);
            return 2;
        }
    }

    struct sigaction action {};
    action.sa_handler = on_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, nullptr);
    sigaction(SIGINT, &action, nullptr);
    std::signal(SIGPIPE, SIG_IGN);
    if (trace_path) {
        struct sigaction trace_action {};
        trace_action.sa_handler = on_trace;
        sigemptyset(&trace_action.sa_mask);
        sigaction(SIGUSR1, &trace_action, nullptr);
        sigaction(SIGUSR2, &trace_action, nullptr);
    }
    prctl(PR_SET_PDEATHSIG, SIGTERM);  // do not outlive the Python process that started us

    auto context = std::make_unique<VerilatedContext>();
    context->commandArgs(argc, argv);
#if VM_TRACE
    context->traceEverOn(true);  // before the model is built, so it keeps its trace hooks
#endif
    auto top = std::make_unique<Vtop>(context.get());
    Tracer tracer;
#if VM_TRACE
    if (trace_path) tracer.open(top.get(), trace_path);
#endif
    auto rxbuf = std::make_unique<Buffer>();
    auto txbuf = std::make_unique<Buffer>();
    Stats stats;

    top->clk = 0;
    top->RX_VALID = 0;
    top->RX_PAYLOAD = 0;
    top->TX_READY = 0;
    top->eval();
    for (int i = 0; i < 4; ++i) {
        top->clk = 1;
        top->eval();
        top->clk = 0;
        top->eval();
    }

    if (bench >= 0) {  // the bare model: same cycle function, no socket
        auto start = std::chrono::steady_clock::now();
        for (long long i = 0; i < bench && !g_stop; ++i) {
            cycle(top.get(), *rxbuf, *txbuf, stats, tracer);
            txbuf->head = txbuf->tail = 0;
        }
        print_stats("BENCH", stats, seconds_since(start));
        top->final();
        tracer.close();
        return 0;
    }

    int client = -1;
    int pty_slave = -1;
    if (use_pty) {
        client = open_pty(&pty_slave);
    } else {
        client = accept_host(port, accept_timeout);
    }
    if (client < 0) {
        tracer.close();
        return client == -3 ? 3 : client == -2 ? 0 : 1;
    }

    auto start = std::chrono::steady_clock::now();
    int status = 0;
    bool open = true;
    while (open && !g_stop) {
        for (int i = 0; i < poll_cycles; ++i) cycle(top.get(), *rxbuf, *txbuf, stats, tracer);
        // host -> model
        if (rxbuf->head == rxbuf->tail) rxbuf->head = rxbuf->tail = 0;
        if (rxbuf->tail == kBufSize) rxbuf->compact();
        if (rxbuf->tail < kBufSize) {
            // read()/write() serve the socket and the pty master alike; with its slave held
            // open the master never reads end-of-file
            ssize_t got = read(client, rxbuf->data + rxbuf->tail, kBufSize - rxbuf->tail);
            if (got > 0) {
                rxbuf->tail += static_cast<size_t>(got);
            } else if (got == 0) {
                open = false;  // the host closed the connection
            } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                std::perror("harness: read");
                open = false;
                status = 1;
            }
        }
        tracer.update(stats.cycles);  // after read(): see g_trace
        // model -> host
        if (txbuf->size() > 0) {
            ssize_t sent = write(client, txbuf->data + txbuf->head, txbuf->size());  // SIGPIPE ignored
            if (sent > 0) {
                txbuf->head += static_cast<size_t>(sent);
                txbuf->compact();
            } else if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                if (errno != EPIPE && errno != ECONNRESET) std::perror("harness: write");
                open = false;
            }
        }
    }
    print_stats("STATS", stats, seconds_since(start));
    close(client);
    if (pty_slave >= 0) close(pty_slave);
    top->final();
    tracer.close();
    return status;
}
