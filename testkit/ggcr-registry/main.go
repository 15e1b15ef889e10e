// Command ggcr-registry serves go-containerregistry's pkg/registry (an in-process OCI registry)
// for the imagecopy integration tests: the third registry implementation, with the referrers
// API on and no cross-repository mount (a mount POST opens an ordinary upload session).
//
// Every request is written to stdout as one Apache combined log line, the format
// testkit/registry.py parses for distribution's access log. Blobs are kept on disk under
// -blobs (one store for every repository); manifests live in memory.
//
//	ggcr-registry -addr 127.0.0.1:5000 -blobs /tmp/blobs [-referrers=true] [-cert c -key k]
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

// recorder remembers the status and the body size of one answer.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

// accessLog wraps next so that each request is logged once its handler returned.
func accessLog(out io.Writer, next http.Handler) http.Handler {
	var mu sync.Mutex
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		rec := &recorder{ResponseWriter: w}
		next.ServeHTTP(rec, req)
		status := rec.status
		if status == 0 {
			status = http.StatusOK
		}
		line := fmt.Sprintf("%s - - [%s] \"%s %s %s\" %d %d \"%s\" \"%s\"\n",
			req.RemoteAddr, time.Now().UTC().Format("02/Jan/2006:15:04:05 -0700"),
			req.Method, req.URL.RequestURI(), req.Proto, status, rec.bytes,
			req.Referer(), req.UserAgent())
		mu.Lock()
		defer mu.Unlock()
		_, _ = io.WriteString(out, line)
	})
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	blobs := flag.String("blobs", "", "directory for blob storage (default: in memory)")
	referrers := flag.Bool("referrers", true, "serve the OCI 1.1 referrers API")
	cert := flag.String("cert", "", "TLS certificate chain (PEM); with -key serves HTTPS")
	key := flag.String("key", "", "TLS private key (PEM)")
	flag.Parse()

	opts := []registry.Option{
		registry.Logger(log.New(os.Stderr, "", log.LstdFlags)),
		registry.WithReferrersSupport(*referrers),
	}
	if *blobs != "" {
		if err := os.MkdirAll(*blobs, 0o755); err != nil {
			log.Fatal(err)
		}
		opts = append(opts, registry.WithBlobHandler(registry.NewDiskBlobHandler(*blobs)))
	}
	server := &http.Server{
		Addr:              *addr,
		Handler:           accessLog(os.Stdout, registry.New(opts...)),
		ReadHeaderTimeout: 30 * time.Second,
	}
	var err error
	if *cert != "" && *key != "" {
		err = server.ListenAndServeTLS(*cert, *key)
	} else {
		err = server.ListenAndServe()
	}
	log.Fatal(err)
}
