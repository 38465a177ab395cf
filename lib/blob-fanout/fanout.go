package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// A blob by digest: its bytes never depend on who asks, so one fetch may answer everyone.
var blobPath = regexp.MustCompile(`^/v2/.+/blobs/sha256:[0-9a-f]{64}$`)

const chunk = 256 << 10

// Headers that describe one connection, not the resource (RFC 9110 section 7.6.1).
var hopByHop = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// Upstream is where requests go: the mirror, over HTTP on a unix socket or TCP.
type Upstream struct {
	transport *http.Transport
	host      string // the URL host the requests name (the Host header is the client's)
}

func NewUpstream(address string, headerTimeout time.Duration) (*Upstream, error) {
	transport := &http.Transport{
		ResponseHeaderTimeout: headerTimeout,
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       60 * time.Second,
		DisableCompression:    true,
	}
	switch {
	case strings.HasPrefix(address, "unix:"):
		path := strings.TrimPrefix(address, "unix:")
		transport.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dialer net.Dialer
			return dialer.DialContext(ctx, "unix", path)
		}
		return &Upstream{transport: transport, host: "mirror"}, nil
	case strings.HasPrefix(address, "http://"):
		host := strings.TrimSuffix(strings.TrimPrefix(address, "http://"), "/")
		if host == "" || strings.Contains(host, "/") {
			return nil, fmt.Errorf("%q is not http://<host>:<port>", address)
		}
		transport.DialContext = (&net.Dialer{Timeout: 5 * time.Second}).DialContext
		return &Upstream{transport: transport, host: host}, nil
	}
	return nil, fmt.Errorf("%q is neither unix:<path> nor http://<host>:<port>", address)
}

// request is r as the mirror should receive it: same method, path, query and end-to-end headers.
func (u *Upstream) request(ctx context.Context, r *http.Request) *http.Request {
	out := r.Clone(ctx)
	out.URL.Scheme, out.URL.Host = "http", u.host
	out.RequestURI = ""
	out.Host = r.Host
	for _, name := range hopByHop {
		out.Header.Del(name)
	}
	return out
}

// Fanout serves blob GETs from shared fills and passes everything else through.
type Fanout struct {
	upstream    *Upstream
	spool       string
	idleTimeout time.Duration
	log         *log.Logger

	mu    sync.Mutex
	fills map[string]*fill
}

func NewFanout(upstream *Upstream, spool string, idleTimeout time.Duration, logger *log.Logger) *Fanout {
	return &Fanout{upstream: upstream, spool: spool, idleTimeout: idleTimeout, log: logger, fills: map[string]*fill{}}
}

func (f *Fanout) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/-/healthy" {
		w.WriteHeader(http.StatusOK)
		return
	}
	// A ranged or conditional request wants something else than the whole blob.
	if r.Method != http.MethodGet || !blobPath.MatchString(r.URL.Path) || r.Header.Get("Range") != "" ||
		r.Header.Get("If-None-Match") != "" || r.Header.Get("If-Modified-Since") != "" {
		f.passThrough(w, r)
		return
	}
	fl, err := f.join(r)
	if err != nil {
		f.log.Printf("cannot spool %s: %v", r.URL.Path, err)
		f.passThrough(w, r)
		return
	}
	defer fl.leave()
	fl.serve(w, r)
}

// join attaches the request to the fill of its path, starting one if none is in flight.
func (f *Fanout) join(r *http.Request) (*fill, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fl, ok := f.fills[r.URL.Path]; ok {
		fl.mu.Lock()
		fl.readers++
		fl.joined++
		fl.mu.Unlock()
		return fl, nil
	}
	file, err := os.CreateTemp(f.spool, "blob-")
	if err != nil {
		return nil, err
	}
	// Unlinked at once: the bytes live as long as someone reads them, and a crash leaves nothing.
	_ = os.Remove(file.Name())
	fl := &fill{file: file, readers: 1, changed: make(chan struct{}), started: time.Now(),
		digest: r.URL.Path[strings.LastIndex(r.URL.Path, ":")+1:]}
	f.fills[r.URL.Path] = fl
	// The fetch belongs to every reader, not to the client that started it: it runs to its end even
	// if that client goes (the registry keeps the blob in S3 only after a whole fetch).
	go f.run(fl, f.upstream.request(context.Background(), r))
	return fl, nil
}

func (f *Fanout) run(fl *fill, req *http.Request) {
	path := req.URL.Path
	resp, err := f.upstream.transport.RoundTrip(req)
	if err != nil {
		f.finish(path, fl, fmt.Errorf("mirror request failed: %w", err))
		return
	}
	defer resp.Body.Close()
	header := resp.Header.Clone()
	for _, name := range hopByHop {
		header.Del(name)
	}
	fl.publishHeader(resp.StatusCode, header, resp.ContentLength)
	f.finish(path, fl, fl.copyBody(resp.Body, f.idleTimeout))
}

func (f *Fanout) finish(path string, fl *fill, err error) {
	f.mu.Lock()
	delete(f.fills, path)
	f.mu.Unlock()
	joined, written, status := fl.end(err)
	outcome := "complete"
	if err != nil {
		outcome = "failed: " + err.Error()
	}
	f.log.Printf("fill %s status=%d bytes=%d clients=%d took=%s %s", path, status, written, joined+1,
		time.Since(fl.started).Round(time.Millisecond), outcome)
}

func (f *Fanout) passThrough(w http.ResponseWriter, r *http.Request) {
	resp, err := f.upstream.transport.RoundTrip(f.upstream.request(r.Context(), r))
	if err != nil {
		http.Error(w, `{"errors":[{"code":"UNAVAILABLE","message":"the mirror did not answer"}]}`, http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	copyHeader(w.Header(), resp.Header)
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(flushingWriter{w}, resp.Body)
}

// fill is one fetch of one blob, spooled to an unlinked file that every reader reads at its own pace.
type fill struct {
	file    *os.File
	started time.Time
	digest  string // the hex the path names

	// For a 200, the bytes are checked against the digest as they are spooled, and every answer holds
	// its last byte back until they match: a cache in front never keeps a blob that is not the one
	// asked for (the registry serves what S3 holds without checking it), and a client sees a broken
	// transfer instead.
	verify bool
	hash   hash.Hash

	mu         sync.Mutex
	changed    chan struct{} // closed (and replaced) whenever anything below changes
	haveHeader bool
	status     int
	header     http.Header
	length     int64 // -1 when the mirror did not say
	written    int64
	done       bool
	err        error
	readers    int
	joined     int
}

func (fl *fill) publishHeader(status int, header http.Header, length int64) {
	fl.mu.Lock()
	fl.status, fl.header, fl.length, fl.haveHeader = status, header, length, true
	if status == http.StatusOK {
		fl.verify, fl.hash = true, sha256.New()
	}
	fl.notifyLocked()
	fl.mu.Unlock()
}

func (fl *fill) copyBody(body io.Reader, idleTimeout time.Duration) error {
	buf := make([]byte, chunk)
	for {
		n, err := readWithin(body, buf, idleTimeout)
		if n > 0 {
			if _, werr := fl.file.Write(buf[:n]); werr != nil {
				return fmt.Errorf("spool write failed: %w", werr)
			}
			if fl.verify {
				fl.hash.Write(buf[:n])
			}
			fl.mu.Lock()
			fl.written += int64(n)
			fl.notifyLocked()
			fl.mu.Unlock()
		}
		if errors.Is(err, io.EOF) {
			fl.mu.Lock()
			defer fl.mu.Unlock()
			if fl.length >= 0 && fl.written != fl.length {
				return fmt.Errorf("the mirror sent %d of %d bytes", fl.written, fl.length)
			}
			if fl.verify {
				if got := hex.EncodeToString(fl.hash.Sum(nil)); got != fl.digest {
					return fmt.Errorf("the mirror's bytes are sha256:%s, not the digest asked for", got)
				}
			}
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func (fl *fill) end(err error) (joined int, written int64, status int) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	fl.done, fl.err = true, err
	fl.notifyLocked()
	if fl.readers == 0 {
		fl.file.Close()
	}
	return fl.joined, fl.written, fl.status
}

func (fl *fill) leave() {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	fl.readers--
	if fl.readers == 0 && fl.done {
		fl.file.Close()
	}
}

func (fl *fill) notifyLocked() {
	close(fl.changed)
	fl.changed = make(chan struct{})
}

// serve answers one reader: the mirror's status and headers as soon as they are known, then the
// bytes as they are spooled. A fill that fails mid-body aborts the answer, so the client sees a
// broken transfer, never a short blob that looks whole.
func (fl *fill) serve(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	var offset int64
	sentHeader := false
	buf := make([]byte, chunk)
	for {
		fl.mu.Lock()
		haveHeader, written, done, err, changed := fl.haveHeader, fl.written, fl.done, fl.err, fl.changed
		if fl.verify && !(done && err == nil) && written > 0 {
			written-- // the last byte waits for the digest to match
		}
		fl.mu.Unlock()

		if !sentHeader && haveHeader {
			copyHeader(w.Header(), fl.header)
			w.WriteHeader(fl.status)
			if flusher, ok := w.(http.Flusher); ok {
				flusher.Flush()
			}
			sentHeader = true
		}
		if !sentHeader && done {
			http.Error(w, `{"errors":[{"code":"UNAVAILABLE","message":"the mirror did not answer"}]}`, http.StatusBadGateway)
			return
		}
		if sentHeader && offset < written {
			n := written - offset
			if n > int64(len(buf)) {
				n = int64(len(buf))
			}
			read, rerr := fl.file.ReadAt(buf[:n], offset)
			if read > 0 {
				if _, werr := w.Write(buf[:read]); werr != nil {
					return // the client went; the fill goes on for the others
				}
				offset += int64(read)
			}
			if rerr != nil && !errors.Is(rerr, io.EOF) {
				panic(http.ErrAbortHandler)
			}
			continue
		}
		if done {
			if err != nil {
				panic(http.ErrAbortHandler)
			}
			return
		}
		if sentHeader {
			if flusher, ok := w.(http.Flusher); ok {
				flusher.Flush()
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
	}
}

// readWithin is one Read that fails when the mirror sends nothing for `limit`.
func readWithin(body io.Reader, buf []byte, limit time.Duration) (int, error) {
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := body.Read(buf)
		done <- result{n, err}
	}()
	timer := time.NewTimer(limit)
	defer timer.Stop()
	select {
	case res := <-done:
		return res.n, res.err
	case <-timer.C:
		if closer, ok := body.(io.Closer); ok {
			closer.Close()
		}
		<-done
		return 0, fmt.Errorf("the mirror sent nothing for %s", limit)
	}
}

func copyHeader(dst, src http.Header) {
	for name, values := range src {
		dst[name] = append([]string(nil), values...)
	}
	for _, name := range hopByHop {
		dst.Del(name)
	}
	// The length is the mirror's; Go recomputes nothing for a streamed body it was told.
	if length := src.Get("Content-Length"); length != "" {
		if _, err := strconv.ParseInt(length, 10, 64); err != nil {
			dst.Del("Content-Length")
		}
	}
}

type flushingWriter struct{ w http.ResponseWriter }

func (f flushingWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if flusher, ok := f.w.(http.Flusher); ok {
		flusher.Flush()
	}
	return n, err
}
