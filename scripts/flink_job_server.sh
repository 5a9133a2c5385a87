#!/usr/bin/env bash
# Fetches Beam's Flink job server with Maven into a lasting cache and prints the path of a jar
# that `java -jar` (and Beam's --flink_job_server_jar) runs. scripts/flink_job_server.sh --help
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/flink_job_server.sh [--flink_version 1.19] [--beam_version 2.62.0] [--quiet]

Prints the path of a runnable Beam Flink job-server jar, fetching it the first time.

Maven Central serves no beam-runners-flink-*-job-server jar for any Beam version (checked for
2.62.0 to 2.77.0 and Flink 1.19 to 2.2), so the script assembles the same job server from the
artifacts that are served: org.apache.beam:beam-runners-flink-<flink>:<beam> (which holds
FlinkJobServerDriver) and its runtime dependencies, copied with `mvn dependency:copy-dependencies`
into the cache, plus a launcher jar whose manifest names the main class and that class path.
Beam 2.62.0 with Flink 1.19 is the newest pair whose dependencies all resolve there.

Beam's gRPC servers (job, artifact and Fn API services) bind every interface; the launcher puts
a rebuilt org.apache.beam.sdk.fn.server.ServerFactory first on the class path, which binds the
address a server is given (loopback by default) instead. It is compiled here with javac.

  --flink_version   Flink minor version of the runner (default 1.19)
  --beam_version    Beam (Java) version of the runner (default 2.62.0)
  --quiet           no progress lines on stderr

Cache: $BEAM_IMAGE_LABELER_CACHE, else $XDG_CACHE_HOME/beam-image-labeler, else
~/.cache/beam-image-labeler; the job server goes under flink/job-server-<beam>-flink<flink>/.
Needs java, javac and mvn on PATH, and Maven Central. Exit status: 0 with the path on stdout,
2 for a bad flag, 3 when a tool or Maven Central is missing (one line on stderr says which).
USAGE
}

die() { echo "flink_job_server.sh: error: $1" >&2; exit "${2:-2}"; }
flink=1.19 beam=2.62.0 quiet=
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --flink_version=*) flink=${1#*=} ;;
    --flink_version) [ $# -ge 2 ] || die "--flink_version needs a value; see --help"; flink=$2; shift ;;
    --beam_version=*) beam=${1#*=} ;;
    --beam_version) [ $# -ge 2 ] || die "--beam_version needs a value; see --help"; beam=$2; shift ;;
    --quiet) quiet=1 ;;
    *) die "unknown flag $1; see --help" ;;
  esac
  shift
done
[[ $flink =~ ^[0-9]+\.[0-9]+$ ]] || die "--flink_version is MAJOR.MINOR, like 1.19; got '$flink'"
[[ $beam =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "--beam_version is like 2.62.0; got '$beam'"

cache=${BEAM_IMAGE_LABELER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/beam-image-labeler}
home=$cache/flink/job-server-$beam-flink$flink
jar=$home/beam-runners-flink-$flink-job-server-$beam.jar
if [ -f "$home/.complete" ] && [ -f "$jar" ]; then
  echo "$jar"
  exit 0
fi
say() { [ -n "$quiet" ] || echo "flink_job_server.sh: $*" >&2; }
for tool in java javac mvn; do
  command -v "$tool" >/dev/null || die "unavailable: '$tool' is not on PATH (needs a JDK 11+ and Maven)" 3
done

# A fresh folder each time; moved into place only when complete.
work=$(mktemp -d "${TMPDIR:-/tmp}/flink-job-server.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lib" "$work/src" "$work/classes"
cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.beam-image-labeler</groupId>
  <artifactId>flink-job-server</artifactId>
  <version>1</version>
  <dependencies>
    <dependency>
      <groupId>org.apache.beam</groupId>
      <artifactId>beam-runners-flink-$flink</artifactId>
      <version>$beam</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-simple</artifactId>
      <version>1.7.30</version>
    </dependency>
  </dependencies>
</project>
POM
say "fetching org.apache.beam:beam-runners-flink-$flink:$beam and its dependencies with Maven"
if ! mvn -B -q -f "$work/pom.xml" \
  org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
  -DincludeScope=runtime -DoutputDirectory="$work/lib" >"$work/mvn.log" 2>&1; then
  grep -m1 'ERROR' "$work/mvn.log" >&2 || tail -3 "$work/mvn.log" >&2
  die "unavailable: Maven could not fetch org.apache.beam:beam-runners-flink-$flink:$beam (is Maven Central reachable?)" 3
fi

# Beam's ServerFactory, with each TCP server bound to the address it is given.
grpc=$(find "$work/lib" -name 'beam-vendor-grpc-*.jar' -printf '%f\n' | sed -E 's/^beam-vendor-grpc-([0-9]+)_([0-9]+)_([0-9]+)-.*/v\1p\2p\3/')
[ -n "$grpc" ] || die "unavailable: no beam-vendor-grpc jar among the dependencies" 3
mkdir -p "$work/src/org/apache/beam/sdk/fn/server"
sed "s/GRPC/$grpc/g" >"$work/src/org/apache/beam/sdk/fn/server/ServerFactory.java" <<'JAVA'
package org.apache.beam.sdk.fn.server;

import java.io.IOException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.SocketAddress;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.function.Supplier;
import org.apache.beam.model.pipeline.v1.Endpoints;
import org.apache.beam.sdk.fn.channel.SocketAddressFactory;
import org.apache.beam.vendor.grpc.GRPC.io.grpc.BindableService;
import org.apache.beam.vendor.grpc.GRPC.io.grpc.Server;
import org.apache.beam.vendor.grpc.GRPC.io.grpc.ServerInterceptors;
import org.apache.beam.vendor.grpc.GRPC.io.grpc.netty.NettyServerBuilder;

/**
 * Same API as Beam's gRPC server factory; servers listen on the address they are given (the
 * loopback address when one is allocated), not on every interface. Only TCP servers: the
 * epoll variants, which this job server does not use, are refused.
 */
public abstract class ServerFactory {
  public static ServerFactory createDefault() {
    return new InetSocketAddressServerFactory(UrlFactory.createDefault(), () -> 0);
  }

  public static ServerFactory createWithUrlFactory(UrlFactory urlFactory) {
    return new InetSocketAddressServerFactory(urlFactory, () -> 0);
  }

  public static ServerFactory createWithPortSupplier(Supplier<Integer> ports) {
    return new InetSocketAddressServerFactory(UrlFactory.createDefault(), ports);
  }

  public static ServerFactory createWithUrlFactoryAndPortSupplier(
      UrlFactory urlFactory, Supplier<Integer> ports) {
    return new InetSocketAddressServerFactory(urlFactory, ports);
  }

  public static ServerFactory createEpollSocket() {
    throw new UnsupportedOperationException("epoll servers are not built into this job server");
  }

  public static ServerFactory createEpollDomainSocket() {
    return createEpollSocket();
  }

  public abstract Server allocateAddressAndCreate(
      List<BindableService> services, Endpoints.ApiServiceDescriptor.Builder descriptor)
      throws IOException;

  public abstract Server create(
      List<BindableService> services, Endpoints.ApiServiceDescriptor descriptor)
      throws IOException;

  /** TCP servers on one address and port. */
  public static class InetSocketAddressServerFactory extends ServerFactory {
    private final UrlFactory urlFactory;
    private final Supplier<Integer> ports;

    private InetSocketAddressServerFactory(UrlFactory urlFactory, Supplier<Integer> ports) {
      this.urlFactory = urlFactory;
      this.ports = ports;
    }

    @Override
    public Server allocateAddressAndCreate(
        List<BindableService> services, Endpoints.ApiServiceDescriptor.Builder descriptor)
        throws IOException {
      InetSocketAddress address = new InetSocketAddress(InetAddress.getLoopbackAddress(), ports.get());
      Server server = listen(services, address);
      descriptor.setUrl(urlFactory.createUrl(address.getHostName(), server.getPort()));
      return server;
    }

    @Override
    public Server create(List<BindableService> services, Endpoints.ApiServiceDescriptor descriptor)
        throws IOException {
      SocketAddress address = SocketAddressFactory.createFrom(descriptor.getUrl());
      if (!(address instanceof InetSocketAddress)) {
        throw new IllegalArgumentException("needs a host:port address, got " + descriptor.getUrl());
      }
      return listen(services, (InetSocketAddress) address);
    }

    private static Server listen(List<BindableService> services, InetSocketAddress address)
        throws IOException {
      NettyServerBuilder builder =
          NettyServerBuilder.forAddress(address)
              .maxInboundMessageSize(Integer.MAX_VALUE)
              .permitKeepAliveTime(20, TimeUnit.SECONDS);
      for (BindableService service : services) {
        builder.addService(
            ServerInterceptors.intercept(service, GrpcContextHeaderAccessorProvider.interceptor()));
      }
      return builder.build().start();
    }
  }

  /** The URL clients are given for a server's host and port. */
  @FunctionalInterface
  public interface UrlFactory {
    String createUrl(String address, int port);

    static UrlFactory createDefault() {
      return (host, port) -> (host.contains(":") ? "[" + host + "]" : host) + ":" + port;
    }
  }
}
JAVA
say "compiling the loopback ServerFactory"
javac -nowarn -d "$work/classes" -cp "$work/lib/*" \
  "$work/src/org/apache/beam/sdk/fn/server/ServerFactory.java" >"$work/javac.log" 2>&1 ||
  { cat "$work/javac.log" >&2; die "could not compile the loopback ServerFactory" 1; }
(cd "$work/classes" && jar --create --file "$work/lib/0-loopback-server-factory.jar" .)

# The launcher: a manifest naming the main class and every jar (the patch first).
python3 - "$work" "$(basename "$jar")" <<'PY'
import os, sys, zipfile
work, name = sys.argv[1], sys.argv[2]
jars = sorted(os.listdir(os.path.join(work, "lib")))
line = "Class-Path: " + " ".join("lib/" + j for j in jars)
lines = [line[:70]] + [" " + line[i : i + 69] for i in range(70, len(line), 69)]
manifest = (
    "Manifest-Version: 1.0\r\n"
    "Main-Class: org.apache.beam.runners.flink.FlinkJobServerDriver\r\n"
    + "\r\n".join(lines) + "\r\n\r\n"
)
with zipfile.ZipFile(os.path.join(work, name), "w") as z:
    z.writestr("META-INF/MANIFEST.MF", manifest)
PY
rm -rf "$work/src" "$work/classes" "$work/pom.xml" "$work/javac.log"
mkdir -p "$(dirname "$home")"
rm -rf "$home"
mv "$work" "$home"
trap - EXIT
chmod 755 "$home"
touch "$home/.complete"
say "job server ready ($(du -sh "$home" | cut -f1))"
echo "$jar"
