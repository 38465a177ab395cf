// Command blob-fanout sits between the security proxy's blob cache and the registry mirror: a cold
// blob is fetched upstream once, spooled to disk as it arrives, and streamed from there to every
// client that asks for it meanwhile. nginx alone holds clients that wait on its cache lock without a
// byte until the whole layer is cached (containerd 2.3 gives up after 30 s without headers), and a
// short lock sends each of them upstream on its own; the registry's proxy fetches a blob it is
// already fetching once more per client. Here the second client gets headers and the bytes so far
// at once and then follows the first fetch.
//
// Only GETs of /v2/<name>/blobs/<digest> are shared; every other request passes through unchanged.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", "", "where to serve: unix:<path> or <host>:<port>")
	upstream := flag.String("upstream", "", "the mirror: unix:<path> or http://<host>:<port>")
	spool := flag.String("spool", os.TempDir(), "folder for blobs in flight (each is unlinked at once and freed when its last reader ends)")
	socketMode := flag.String("socket-mode", "0660", "permissions of a unix listen socket")
	headerTimeout := flag.Duration("header-timeout", 15*time.Minute, "how long to wait for the mirror's response headers")
	idleTimeout := flag.Duration("read-timeout", 15*time.Minute, "how long the mirror may send nothing mid-body before the fill fails")
	drain := flag.Duration("drain", 9*time.Second, "how long a stop waits for requests in flight")
	flag.Parse()
	if *listen == "" || *upstream == "" {
		fmt.Fprintln(os.Stderr, "blob-fanout: -listen and -upstream are required")
		os.Exit(2)
	}
	mode, err := strconv.ParseUint(*socketMode, 8, 32)
	if err != nil {
		fmt.Fprintf(os.Stderr, "blob-fanout: -socket-mode %q is not an octal mode\n", *socketMode)
		os.Exit(2)
	}
	if info, err := os.Stat(*spool); err != nil || !info.IsDir() {
		fmt.Fprintf(os.Stderr, "blob-fanout: -spool %s is not a folder\n", *spool)
		os.Exit(2)
	}
	target, err := NewUpstream(*upstream, *headerTimeout)
	if err != nil {
		fmt.Fprintf(os.Stderr, "blob-fanout: -upstream: %v\n", err)
		os.Exit(2)
	}
	listener, err := listenOn(*listen, os.FileMode(mode))
	if err != nil {
		fmt.Fprintf(os.Stderr, "blob-fanout: -listen: %v\n", err)
		os.Exit(1)
	}
	logger := log.New(os.Stderr, "blob-fanout ", log.LstdFlags|log.LUTC)
	fanout := NewFanout(target, *spool, *idleTimeout, logger)
	server := &http.Server{Handler: fanout, ReadHeaderTimeout: time.Minute}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		ctx, cancel := context.WithTimeout(context.Background(), *drain)
		defer cancel()
		_ = server.Shutdown(ctx)
	}()
	logger.Printf("serving on %s, mirror at %s", *listen, *upstream)
	if err := server.Serve(listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Printf("stopped: %v", err)
		os.Exit(1)
	}
}

func listenOn(address string, mode os.FileMode) (net.Listener, error) {
	if !strings.HasPrefix(address, "unix:") {
		return net.Listen("tcp", address)
	}
	path := strings.TrimPrefix(address, "unix:")
	// A socket left by a killed process would make bind() fail.
	if info, err := os.Lstat(path); err == nil && info.Mode()&os.ModeSocket != 0 {
		_ = os.Remove(path)
	}
	listener, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, mode); err != nil {
		listener.Close()
		return nil, err
	}
	return listener, nil
}
