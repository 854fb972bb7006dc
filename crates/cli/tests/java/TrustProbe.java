// Opens one HTTPS connection the way a Java client of the time does (HttpsURLConnection and the
// JVM's default trust managers, so -Djavax.net.ssl.trustStore decides what is trusted) and says
// how it went: "status <code> <cipher suite>", or "tls-failed <exception>" and exit code 2.
// Run in single-file source mode: java TrustProbe.java <url>
import java.net.URL;
import javax.net.ssl.HttpsURLConnection;
import javax.net.ssl.SSLException;

public class TrustProbe {
    public static void main(String[] args) throws Exception {
        HttpsURLConnection c = (HttpsURLConnection) new URL(args[0]).openConnection();
        c.setConnectTimeout(20000);
        c.setReadTimeout(20000);
        try {
            int code = c.getResponseCode();
            System.out.println("status " + code + " " + c.getCipherSuite());
        } catch (SSLException e) {
            System.out.println("tls-failed " + e);
            System.exit(2);
        }
    }
}
