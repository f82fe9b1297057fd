package nstree

import (
	"io"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"
)

// enterTerminal runs c (whose command ends in `setsid --ctty -w CMD`) on a
// new pseudo-terminal and relays it to the caller's terminal term, raw,
// with its window size. The entered shell gets the pty as its controlling
// terminal in a session of its own inside the container's pid namespace:
// on the caller's terminal, whose session leader and foreground group are
// outside that namespace, a shell cannot set or restore its terminal's
// process group.
func enterTerminal(c *exec.Cmd, term *os.File) error {
	m, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	master := os.NewFile(uintptr(m), "ptmx")
	defer master.Close()
	if err := unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 0); err != nil {
		return err
	}
	// TIOCGPTPEER opens the slave through the master: no path to look up
	// in a /dev/pts that may not be this pty's. Its argument is the flags.
	s, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(m), unix.TIOCGPTPEER, uintptr(unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC))
	if errno != 0 {
		return errno
	}
	slave := os.NewFile(s, "pts")
	resize := func() {
		if ws, err := unix.IoctlGetWinsize(int(term.Fd()), unix.TIOCGWINSZ); err == nil {
			_ = unix.IoctlSetWinsize(int(slave.Fd()), unix.TIOCSWINSZ, ws)
		}
	}
	resize()
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, unix.SIGWINCH)
	defer signal.Stop(winch)

	c.Stdin, c.Stdout, c.Stderr = slave, slave, slave
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if saved, err := unix.IoctlGetTermios(int(term.Fd()), unix.TCGETS); err == nil {
		raw := *saved
		raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
		raw.Oflag &^= unix.OPOST
		raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
		raw.Cflag &^= unix.CSIZE | unix.PARENB
		raw.Cflag |= unix.CS8
		raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
		if err := unix.IoctlSetTermios(int(term.Fd()), unix.TCSETS, &raw); err == nil {
			defer unix.IoctlSetTermios(int(term.Fd()), unix.TCSETS, saved)
		}
	}
	if err := c.Start(); err != nil {
		slave.Close()
		return err
	}
	slave.Close()
	go func() { _, _ = io.Copy(master, os.Stdin) }()
	out := make(chan struct{})
	go func() {
		_, _ = io.Copy(os.Stdout, master) // ends with EIO once every slave is closed
		close(out)
	}()
	waited := make(chan error, 1)
	go func() { waited <- c.Wait() }()
	for {
		select {
		case <-winch:
			resize()
		case err := <-waited:
			<-out
			return err
		}
	}
}
