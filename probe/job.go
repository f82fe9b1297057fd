package probe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// JobArg is argv[1] of the scratch job: main dispatches on it before any
// CLI parsing.
const JobArg = "__cr_probe_job"

// JobMain is the scratch job. With "sockets" it holds a TCP listener and a
// bound UDP socket on loopback. It prints "ready PID", then on every
// SIGUSR1 uses what it holds (a connection to its listener, a datagram to
// itself) and prints "ok PID" or "fail REASON".
func JobMain(args []string) int {
	var sk *sockets
	if len(args) > 1 && args[1] == "sockets" {
		var err error
		if sk, err = openSockets(); err != nil {
			fmt.Printf("fail %v\n", err)
			return 1
		}
	}
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	fmt.Printf("ready %d\n", os.Getpid())
	for range usr1 {
		if sk != nil {
			if err := sk.use(); err != nil {
				fmt.Printf("fail %v\n", err)
				continue
			}
		}
		fmt.Printf("ok %d\n", os.Getpid())
	}
	return 0
}

type sockets struct {
	tcp *net.TCPListener
	udp *net.UDPConn
}

func openSockets() (*sockets, error) {
	// Plain TCP: Go listens with MPTCP by default since 1.24, and CRIU
	// cannot dump MPTCP sockets ("Unsupported proto 262").
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen on tcp: %w", err)
	}
	l := ln.(*net.TCPListener)
	u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, fmt.Errorf("bind udp: %w", err)
	}
	return &sockets{tcp: l, udp: u}, nil
}

// use checks that the listener still accepts and the UDP socket still
// receives what is sent to its address.
func (s *sockets) use() error {
	deadline := time.Now().Add(3 * time.Second)
	c, err := net.DialTimeout("tcp", s.tcp.Addr().String(), time.Until(deadline))
	if err != nil {
		return fmt.Errorf("connect to the restored listener: %w", err)
	}
	defer c.Close()
	_ = s.tcp.SetDeadline(deadline)
	a, err := s.tcp.Accept()
	if err != nil {
		return fmt.Errorf("accept on the restored listener: %w", err)
	}
	a.Close()
	if _, err := s.udp.WriteTo([]byte("cr"), s.udp.LocalAddr()); err != nil {
		return fmt.Errorf("send to the restored udp socket: %w", err)
	}
	_ = s.udp.SetReadDeadline(deadline)
	buf := make([]byte, 8)
	n, _, err := s.udp.ReadFrom(buf)
	if err != nil {
		return fmt.Errorf("receive on the restored udp socket: %w", err)
	}
	if string(buf[:n]) != "cr" {
		return errors.New("the restored udp socket received something else")
	}
	return nil
}
